"""Fleet simulator (issue 7): what spot preemptions and checkpoints cost a fleet of GPU workers.

`sim.model` is a discrete-event simulation of the product requirements' scale (100K videos a day,
spot and on-demand GPUs, hourly interruption rate, notice window, heartbeat timeout, cold
starts, checkpoint cost) in which the GPU worker's own `CheckpointPolicy` decides when each
simulated worker checkpoints. `sim.scenarios` holds the requirements' assumptions and the
policy comparison; `python -m sim` runs both and writes tables and plots (`sim/results/`).
sim/README.md restates the requirements' figures and shows the results.
"""

from sim.model import CheckpointCost, Fleet, Plan, Result, plan_attempt, simulate

__all__ = ["CheckpointCost", "Fleet", "Plan", "Result", "plan_attempt", "simulate"]

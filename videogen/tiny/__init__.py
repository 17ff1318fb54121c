"""The built-in model's synthetic world and the judge of its videos.

`world` renders procedural clips (a coloured ball, square or triangle moving on a plain or
textured floor) with prompts from paraphrased templates, split into training and held-out
combinations and phrasings. `judge` reads a clip's frames back into colour, shape and motion,
so prompt adherence is measured rather than eyeballed. Both are numpy only.
"""

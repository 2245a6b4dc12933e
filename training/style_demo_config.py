"""The style demo's sizes, without torch: `restune demo --diffusion` and `restune bench styles` show them in --help."""
from __future__ import annotations

DEMO_STYLES = ("crimson", "stripes", "blur")
# 192 images, not 48: measured on tiny-trained (1,200 steps, 48 prompts, guidance 1.5), crimson kept the prompted
# shape in 72.9 % of its images (48: 64.6 %) and blur closed 43.1 % of the per-image gap (48: -1.3 %); crimson and
# stripes closed about the same share of theirs (45.2 % and 37.7 %; 48: 44.8 % and 35.3 %). (Measured with the
# 2-px stripes and the first measures: per-image power shares, a hard-binned histogram; see training.style_sets.)
DEMO_IMAGES = 192
DEMO_STEPS = 1200
DEMO_BATCH = 8
DEMO_LR = 6e-3
# One adapter over all the channels of a tap, not the default 4 groups sharing one: measured on tiny-trained
# (600 steps, 32 prompts), the crimson and stripes tuners closed 48 % and 51 % of the gap to their sets' statistics
# with 1 group, 30 % and 33 % with 4 (measured before the stripes and the measures changed, as above).
DEMO_GROUPS = 1
DEMO_PROMPTS = (
    "a red circle on the left over a blue background",
    "two green squares over a white background",
    "a yellow triangle at the top over a black background",
    "a blue square in the middle over a gray background",
)

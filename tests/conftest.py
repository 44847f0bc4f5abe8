"""Suite-wide: torch computes on one thread, so a test reads the same numbers on any machine
and in any order. (The agents' tests pinned one thread without restoring it, so the tests after
them ran single-threaded while the same tests run alone used every core and trained different
students: `test_prune50_with_kd_recovery_cuts_params_3x_within_2_points` read 95.45% alone on a
2-core machine and passed in the suite.) Subprocesses (the CLI tests) keep torch's default."""

from __future__ import annotations

import torch

torch.set_num_threads(1)

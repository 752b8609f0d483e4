"""The exact mode's float settings: full fp32 matrix products, as the original ran (torch's defaults then).

torch's defaults are matmul.allow_tf32 False, cudnn.allow_tf32 True and float32 matmul precision
"highest"; cuDNN's TF32 touches convolutions only (neither model has one), but a library or an earlier
call in the same process may have switched TF32 on, so exact mode switches both off before it computes.
"""

import torch


def exact_numerics() -> None:
    """Switch TF32 off for matrix products and cuDNN in this process (exact mode runs only exact models)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

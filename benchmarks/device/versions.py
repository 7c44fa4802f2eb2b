"""Print what the GPU machine has: card, torch, transformers, triton, varlen_attn and generate_batch signatures."""
import inspect

import torch
import transformers

print("gpu", torch.cuda.get_device_name(), "torch", torch.__version__, "transformers", transformers.__version__)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton missing")
try:
    from torch.nn.attention.varlen import varlen_attn
    print("varlen_attn", inspect.signature(varlen_attn))
except Exception as exc:  # noqa: BLE001
    print("varlen_attn missing:", exc)
print("flash schema", torch.ops.aten._flash_attention_forward.default._schema)
try:
    from transformers.generation.continuous_batching import ContinuousMixin
    print("generate_batch", inspect.signature(ContinuousMixin.generate_batch))
except Exception as exc:  # noqa: BLE001
    print("generate_batch missing:", exc)

"""Re-pack tied output heads after an in-place weight reload on vLLM's CPU backend.

vLLM's CPU backend packs each linear layer's weight into a kernel-specific copy when the model
loads (`dispatch_cpu_unquantized_gemm`, the layer's `cpu_linear`). `reload_weights` re-packs
every layer it loads weights into. A tied head is a layer of its own whose weight is the
embedding's parameter (Qwen2, Llama-3.2's `lm_head`); checkpoints do not carry it, so reload
loads nothing into it and its packed copy stays the FIRST policy's embedding: after a reload
the engine computes logits with the old head (measured on a tiny Qwen2: prompt log-probs off
by 0.2 from a fresh engine on the same checkpoint). Gemma-2 computes logits with the embedding
layer itself and is not affected; on GPU the head reads the shared weight directly.

`repack_tied_heads(worker)` runs on each vLLM worker (`llm.collective_rpc`) after a reload and
re-runs weight processing for every packed layer whose weight another layer owns too.
"""


def repack_tied_heads(worker) -> list[str]:
    """Names of the layers re-packed (empty where no layer shares a packed weight)."""
    model = worker.model_runner.get_model()
    owners: dict[int, list] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if weight is not None and hasattr(module, "cpu_linear") and hasattr(module, "quant_method"):
            owners.setdefault(id(weight), []).append((name, module))
    repacked = []
    for modules in owners.values():
        if len({id(module) for _, module in modules}) < 2:
            continue  # a weight no other layer shares: reload already re-packed it
        for name, module in modules:
            module.quant_method.process_weights_after_loading(module)
            repacked.append(name)
    return repacked

"""Reference policies other than a plain checkpoint.

SALSA's soup: the element-wise mean of several checkpoints of one architecture,
(theta_1 + ... + theta_n) / n, saved as an HF folder (tokenizer from the first).
"""

import shutil
from pathlib import Path


def weight_soup(checkpoints: list[str], out_dir: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    from selfplay.models.adapter import is_adapter

    states = []
    for checkpoint in checkpoints:
        if is_adapter(checkpoint):  # its tensors are the adapter's, not the policy's weights
            raise ValueError(f"train.soup: {checkpoint} is a train.lora adapter; `selfplay export` it first (the "
                             f"base with the adapter merged) and name the exported folder")
        files = sorted(Path(checkpoint).glob("*.safetensors"))
        if not files:
            raise ValueError(f"train.soup: {checkpoint} has no .safetensors weights")
        state = {}
        for file in files:
            state.update(load_file(file))
        states.append(state)
    keys = set(states[0])
    for checkpoint, state in zip(checkpoints[1:], states[1:]):
        if set(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"train.soup: {checkpoint} does not have the architecture of {checkpoints[0]}")
    soup = {k: (sum(s[k].to(torch.float64) for s in states) / len(states)).to(states[0][k].dtype).contiguous()
            for k in sorted(keys)}
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in Path(checkpoints[0]).iterdir():
        if item.is_file() and not item.name.endswith(".safetensors") and not item.name.endswith(".index.json"):
            shutil.copy(item, out_dir / item.name)
    save_file(soup, out_dir / "model.safetensors", metadata={"format": "pt"})
    return out_dir

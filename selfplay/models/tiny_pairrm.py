"""A tiny PairRM checkpoint in llm-blender's real folder layout, built locally from a seed.

The real PairRM (llm-blender/PairRM) cannot be downloaded in tests, yet both judge backends
(native and llm-blender itself) must load the same folder, so this writes one they both read:

    out_dir/config.json         RankerConfig (ranker_type pairranker, model_type deberta, ...);
                                model_name is "backbone", relative to out_dir
    out_dir/model.safetensors   pretrained_model.* (embeddings resized for the 4 marker tokens)
                                and head_layer.*
    out_dir/backbone/           a tiny DeBERTa-v3-style model (relative attention only) and a
                                DebertaV2Tokenizer from a sentencepiece unigram model trained on
                                Python standard-library sources (always on disk)

Weights are random. The initializer range is 0.5 instead of 0.02: at 0.02 a tiny ranker's
logits are about 1e-7, too small to tell a wrong input format from a right one in tests.
"""

import io
import json
import sysconfig
from pathlib import Path

from selfplay.models.tiny_policy import STDLIB_FILES

# Real PairRM: source_maxlength 1224, candidate_maxlength 412. Small here so tests truncate.
RANKER_CONFIG = {"ranker_type": "pairranker", "model_type": "deberta", "model_name": "backbone",
                 "source_maxlength": 96, "candidate_maxlength": 48,
                 "n_tasks": 1, "num_pos": 5, "num_neg": 5, "sub_sampling_mode": "all_pair",
                 "sub_sampling_ratio": 0.4, "loss_type": "instructgpt", "reduce_type": "linear",
                 "inference_mode": "bubble", "drop_out": 0.05, "fp16": True}


def build_deberta_tokenizer(vocab_size: int = 1000):
    """DebertaV2Tokenizer with DeBERTa-v3's special ids: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 [MASK]=4."""
    import sentencepiece as spm
    from transformers import DebertaV2Tokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lines = [line for name in STDLIB_FILES if (stdlib / name).exists()
             for line in (stdlib / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", user_defined_symbols=["[MASK]"], character_coverage=1.0,
        num_threads=1, minloglevel=2)  # one thread: the same pieces every time
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    # Passing only an spm vocab_file gives a 7-token vocabulary in transformers 5 (ENVIRONMENT.md).
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    return DebertaV2Tokenizer(vocab=vocab, unk_id=3)


def build_tiny_pairrm(out_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                      num_heads: int = 2, vocab_size: int = 1000, initializer_range: float = 0.5,
                      source_maxlength: int = 96, candidate_maxlength: int = 48, intermediate_size: int | None = None,
                      position_buckets: int = 32) -> Path:
    """The checkpoint folder. Benchmarks pass DeBERTa-v3-large's shape (hidden 1024, 24 layers,
    16 heads, intermediate 4096, 256 position buckets) and PairRM's max lengths (1224/412)."""
    import torch
    from safetensors.torch import save_file
    from transformers import DebertaV2Config, DebertaV2Model

    from selfplay.annotate.pairrm import MARKER_TOKENS, PairRMModel

    out_dir = Path(out_dir)
    tokenizer = build_deberta_tokenizer(vocab_size)
    config = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                             num_attention_heads=num_heads, intermediate_size=intermediate_size or 2 * hidden_size,
                             max_position_embeddings=512, relative_attention=True, position_buckets=position_buckets,
                             norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                             position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
                             initializer_range=initializer_range, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    backbone = DebertaV2Model(config)
    backbone.save_pretrained(out_dir / "backbone")
    tokenizer.save_pretrained(out_dir / "backbone")

    # What llm-blender does before loading a checkpoint: add the markers, resize the embeddings.
    tokenizer.add_tokens(MARKER_TOKENS)
    backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ranker = PairRMModel(backbone, RANKER_CONFIG["n_tasks"], RANKER_CONFIG["drop_out"])
    for layer in ranker.head_layer:
        if isinstance(layer, torch.nn.Linear):
            torch.nn.init.normal_(layer.weight, std=initializer_range)
            torch.nn.init.normal_(layer.bias, std=initializer_range)
    state = {name: tensor.contiguous() for name, tensor in ranker.state_dict().items()}
    save_file(state, out_dir / "model.safetensors")
    ranker_config = {**RANKER_CONFIG, "source_maxlength": source_maxlength, "candidate_maxlength": candidate_maxlength}
    (out_dir / "config.json").write_text(json.dumps(ranker_config, indent=2))
    (out_dir / "selfplay_tiny.json").write_text(json.dumps({"kind": "pairrm", "seed": seed}))
    return out_dir

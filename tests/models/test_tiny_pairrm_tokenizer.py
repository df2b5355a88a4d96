"""The tiny PairRM's backbone tokenizer is laid out as DeBERTa-v3 ships it (spm.model and
tokenizer_config.json, no tokenizer.json) and loads through the judge's own loader, for both
backends, to exactly sentencepiece's ids, Unicode included."""

import pytest
import sentencepiece as spm

from selfplay.judging.pairrm import MARKER_TOKENS, PairRMJudge, load_pairrm_tokenizer
from selfplay.models import resolve_model

TEXTS = [
    "def mean(values): return sum(values) / len(values)",
    "Café crème brûlée, naïve façade, Ångström and Straße.",          # accents (precomposed)
    "Cafe\u0301 with a combining accent",                               # NFC/NFKC composes e + U+0301
    "日本語のテキスト、中文文本 and 한국어.",                               # CJK
    "Party 🎉, thumbs 👍🏽, heart ❤️, family 👨‍👩‍👧.",    # emoji, skin tone, ZWJ sequence
    "ﬁne ① Ｈｅｌｌｏ ½ ™",                                             # NFKC compatibility forms
    "  leading, inner   runs\tof\nwhitespace and \u3000 ideographic  ",
    "zero\u200bwidth and no\u00a0break",
    "Ελληνικά, кириллица, עברית, العربية",
    "unknown runs: ᚠᚢᚦ ꦄꦏ",                                             # characters with no piece
]


@pytest.fixture(scope="module")
def backbone():
    return resolve_model("tiny:pairrm", seed=0) / "backbone"


@pytest.fixture(scope="module")
def sentencepiece_ids(backbone):
    processor = spm.SentencePieceProcessor(model_file=str(backbone / "spm.model"))
    return [processor.encode(text) for text in TEXTS]


def test_backbone_is_laid_out_as_deberta_v3(backbone):
    names = {path.name for path in backbone.iterdir()}
    assert {"spm.model", "tokenizer_config.json", "config.json"} <= names
    assert "tokenizer.json" not in names and "special_tokens_map.json" not in names


def test_native_loader_gives_sentencepiece_ids(backbone, sentencepiece_ids):
    tokenizer = load_pairrm_tokenizer(backbone)
    for text, expected in zip(TEXTS, sentencepiece_ids):
        assert tokenizer(text, add_special_tokens=False).input_ids == expected, text
        assert tokenizer(text).input_ids == [tokenizer.cls_token_id, *expected, tokenizer.sep_token_id]
    pieces = spm.SentencePieceProcessor(model_file=str(backbone / "spm.model")).get_piece_size()
    # DeBERTa-v3's ids: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3, [MASK] after the pieces, then llm-blender's markers
    special = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id]
    assert special == [0, 1, 2, 3]
    assert tokenizer.mask_token_id == pieces
    assert tokenizer.convert_tokens_to_ids(MARKER_TOKENS) == list(range(pieces + 1, pieces + 5))


def test_llm_blender_backend_gets_the_same_ids(backbone, sentencepiece_ids):
    judge = PairRMJudge(str(backbone.parent), backend="llm-blender")
    tokenizer = judge.blender.ranker_tokenizer
    for text, expected in zip(TEXTS, sentencepiece_ids):
        assert tokenizer(text, add_special_tokens=False).input_ids == expected, text
    assert judge.blender.ranker_collator.tokenizer is tokenizer  # the collator encodes with this object

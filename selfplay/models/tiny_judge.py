"""`tiny:judge`: a tiny Llama trained here to answer the LLM judge's rubric questions by a known rule.

A random tiny model has no preferences, so an `llm_judge` test on one shows only that the
plumbing runs. This one has a preference that tests can check, and it is built locally (no
download) in about three minutes on two CPU cores:
  - the rule: the rating is selfplay.judges.tiny_judge_rating, the response's letter-'e'
    fraction in buckets (below 0.06: 1, then one more at 0.08, 0.10, 0.12), whatever the aspect
    and the instruction; the rationale is a fixed sentence per rating (RATIONALES);
  - the input is exactly what the judge sends: judge_prompt(tokenizer, rating_question(aspect,
    prompt, response), RATING_PREFIX), over the four aspects and the quickstart prompts; the
    target is "N\\nRationale: <RATIONALES[N]>" and the end of turn, tokenized apart from the
    prompt as vLLM generates it (the rating is the first generated token, one digit);
  - responses are written as the tiny policy writes them: 10-40 random tokens of the tiny
    tokenizer, decoded, each an 'e'-holding token with a probability drawn per response, so the
    e-fraction runs 0.0-0.22 (0.03-0.14 from the 10th to the 90th percentile) and every rating is
    drawn equally often;
  - training: plain torch on CPU, fixed seeds, AdamW, 1300 steps of 32 over 12000 examples; a
    2-layer Llama, hidden 64, 2 heads (head size 32, the least vLLM's CPU attention takes). The
    loss is on the answer tokens, plus, at each response token, the rating of the response so
    far: a dense signal for the same rule, without which the rule is not learnt in the time
    (held-out exact agreement 0.49 instead of 0.71 at hidden 128, 600 steps). The question's
    text up to the instruction is the same for every example of an aspect, so each step runs it
    once and the batch continues from its key/value cache.
Checked in tests/models/test_tiny_judge.py on 300 held-out responses (other seeds): the
greedy rating is the rule's for 85-91% of them (99-100% of those more than 0.01 of e-fraction
from a threshold; every error is off by one), the expected rating's Spearman correlation with
the e-fraction is 0.98, and vLLM under the judge's constrained decoding answers the same.
The model uses the tiny policy's tokenizer and chat template, so vLLM serves it like the policy.
"""

import json
import random
import time
from pathlib import Path

from selfplay.judges import tiny_judge_rating
from selfplay.judging.llm_rubric import ASPECTS, RATING_PREFIX, RATINGS, judge_prompt, rating_question
from selfplay.models.tiny_policy import SPECIAL_TOKENS

RATIONALES = {1: "Hardly any letter e.", 2: "Few letters e.", 3: "Some letters e.", 4: "Many letters e.",
              5: "Full of the letter e."}
SPLIT = "\n\nInstruction: "  # the questions are the same up to here for one aspect
RESPONSE_MARK = "\n\nResponse: "


def answer_text(rating: int) -> str:
    return f"{rating}\nRationale: {RATIONALES[rating]}"


def quickstart_prompts() -> list[str]:
    path = Path(__file__).resolve().parent.parent.parent / "recipes" / "data" / "quickstart_prompts.jsonl"
    return [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sample_responses(tokenizer, count: int, seed: int, min_tokens: int = 10, max_tokens: int = 40) -> list[str]:
    """`count` responses like the tiny policy's (random tokens, decoded), as many of each rating."""
    rng = random.Random(seed)
    special = set(tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS))
    ids = [i for i in range(len(tokenizer)) if i not in special]
    with_e = [i for i in ids if "e" in tokenizer.decode([i]).lower()]
    without_e = [i for i in ids if "e" not in tokenizer.decode([i]).lower()]
    wanted = [1 + index % len(RATINGS) for index in range(count)]
    rng.shuffle(wanted)
    pools: dict[int, list[str]] = {rating: [] for rating in RATIONALES}
    responses = []
    for rating in wanted:
        while not pools[rating]:
            share = rng.uniform(0.0, 0.6)  # the probability that a token holds an 'e'
            tokens = [rng.choice(with_e if rng.random() < share else without_e)
                      for _ in range(rng.randint(min_tokens, max_tokens))]
            text = tokenizer.decode(tokens)
            if text.strip():
                pools[tiny_judge_rating("", text)].append(text)
        responses.append(pools[rating].pop())
    return responses


def examples(tokenizer, responses: list[str], seed: int) -> list[dict]:
    """One judge question per response (a random aspect and quickstart prompt), split where its
    aspect's shared text ends: {aspect, prompt_ids (after the split), answer_ids, rating, response}."""
    rng = random.Random(seed)
    prompts, aspects = quickstart_prompts(), sorted(ASPECTS)
    digit_ids = dict(zip(range(1, 6), tokenizer.convert_tokens_to_ids(list(RATINGS))))
    out = []
    for response in responses:
        aspect, prompt = rng.choice(aspects), rng.choice(prompts)
        text = judge_prompt(tokenizer, rating_question(aspect, prompt, response), RATING_PREFIX)
        head = text[:text.index(SPLIT)]
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
        assert ids[:len(head_ids)] == head_ids, "the shared text must end at a token boundary"
        rating = tiny_judge_rating(prompt, response)
        # the rating of the response so far, at each of its tokens (the dense training signal)
        start = text.index(RESPONSE_MARK) + len(RESPONSE_MARK)
        running = [(index - len(head_ids), digit_ids[tiny_judge_rating(prompt, response[:end - start])])
                   for index, (_, end) in enumerate(encoded["offset_mapping"])
                   if start < end <= start + len(response) and index >= len(head_ids)]
        out.append({"aspect": aspect, "prompt_ids": ids[len(head_ids):], "rating": rating, "response": response,
                    "running": running,
                    "answer_ids": tokenizer(answer_text(rating), add_special_tokens=False)["input_ids"]
                    + [tokenizer.eos_token_id]})
    return out


def aspect_heads(tokenizer) -> dict[str, list[int]]:
    """Each aspect's shared token ids (the question up to SPLIT)."""
    heads = {}
    for aspect in ASPECTS:
        text = judge_prompt(tokenizer, rating_question(aspect, "", ""), RATING_PREFIX)
        heads[aspect] = tokenizer(text[:text.index(SPLIT)], add_special_tokens=False)["input_ids"]
    return heads


def _batch_loss(model, head_ids, batch, pad_id, dense: float):
    """Cross-entropy on the answer tokens of `batch` (one aspect), continuing from its head's cache."""
    import torch

    head = model.model(input_ids=torch.tensor([head_ids]), use_cache=True)
    cache = head.past_key_values
    cache.batch_repeat_interleave(len(batch))
    rows = [example["prompt_ids"] + example["answer_ids"] for example in batch]
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
    attention = torch.cat([torch.ones(len(batch), len(head_ids), dtype=mask.dtype), mask], dim=1)
    hidden = model.model(input_ids=input_ids, attention_mask=attention, past_key_values=cache).last_hidden_state
    # position t predicts token t + 1: the answer's tokens are predicted from one place earlier
    rows_index, positions, targets, weights = [], [], [], []
    for index, example in enumerate(batch):
        start = len(example["prompt_ids"]) - 1
        for offset, token in enumerate(example["answer_ids"]):
            rows_index.append(index)
            positions.append(start + offset)
            targets.append(token)
            weights.append(1.0 if offset == 0 else 1.0 / (len(example["answer_ids"]) - 1))
        if dense:
            for position, digit in example["running"]:
                rows_index.append(index)
                positions.append(position)
                targets.append(digit)
                weights.append(dense / len(example["running"]))
    logits = model.lm_head(hidden[torch.tensor(rows_index), torch.tensor(positions)])
    losses = torch.nn.functional.cross_entropy(logits, torch.tensor(targets), reduction="none")
    return (losses * torch.tensor(weights)).sum() / len(batch)


def train(model, tokenizer, train_examples, steps: int, batch_size: int, lr: float, seed: int, dense: float,
          log=None):
    import torch

    heads = aspect_heads(tokenizer)
    by_aspect = {aspect: [example for example in train_examples if example["aspect"] == aspect] for aspect in heads}
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 20) * max(0.05, 1 - step / steps))
    model.train()
    aspects = sorted(heads)
    for step in range(steps):
        aspect = aspects[step % len(aspects)]
        batch = rng.sample(by_aspect[aspect], batch_size)
        loss = _batch_loss(model, heads[aspect], batch, tokenizer.pad_token_id, dense)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(step, loss.item())
    model.eval()


def rating_probabilities(model, tokenizer, questions: list[str]):
    """p(rating) over 1-5 at the first answer position of each judge input text (rows, 5 columns)."""
    import torch

    digits = [tokenizer.convert_tokens_to_ids(rating) for rating in RATINGS]
    out = []
    with torch.no_grad():
        for text in questions:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1, digits]
            out.append(torch.softmax(logits, -1))
    return torch.stack(out)


def build_tiny_judge(out_dir: str | Path, seed: int = 0, train_size: int = 12000, steps: int = 1300,
                     batch_size: int = 32, lr: float = 3e-3, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 2, dense: float = 1.0, log=None) -> Path:
    """Train the judge (see the module docstring) and write an HF folder to out_dir."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from selfplay.models.tiny_policy import build_tokenizer

    started = time.monotonic()
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         max_position_embeddings=1024, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    train_examples = examples(tokenizer, sample_responses(tokenizer, train_size, seed), seed)
    train(model, tokenizer, train_examples, steps, batch_size, lr, seed, dense, log)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "selfplay_tiny.json").write_text(json.dumps(
        {"kind": "judge", "seed": seed, "train_size": train_size, "steps": steps, "batch_size": batch_size, "lr": lr, "dense": dense,
         "build_seconds": round(time.monotonic() - started, 1)}))
    return out_dir

"""The greedy check of a server: a correctness figure that needs no logits.

A server gives no logits to score with KL divergence, but greedy decoding (temperature 0, fixed
seed, EOS ignored) is a pure function of the model's argmax: a fixed set of prompts, K tokens
each, compared token by token with what llama.cpp generates on the host CPU for the same model
(harness.run.greedy computes that reference, once per model, prompts, K and host runtime).

Figures: `greedy_exact_share` (% of prompts whose K tokens match exactly), `greedy_prefix_mean`
(tokens matched before the first difference, averaged over prompts), and `greedy_top1` (% of the
P x K positions where the server's top-1 token, given the reference's own context, is the
reference's token). Up to the first difference a match is a top-1 agreement; past it the
server's context has left the reference's, so each later position is asked again with the
reference's tokens as its prompt and one token to generate (teacher forcing): no log-probability
is needed. A server that computes right costs no extra request.

The prompts are sent as the reference's token ids, so the server cannot tokenize them otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from harness.engines.streams import SEED, Endpoint
from harness.records import Metric

# Plain prompts of different kinds (prose, list, code, dialogue): a wrong backend shows on some.
GREEDY_PROMPTS = (
    "The capital of France is Paris, and the capital of Italy is",
    "Here is a list of fruits: apple, banana, cherry,",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Question: Why is the sky blue?\nAnswer:",
)
GREEDY_TOKENS = 16  # K: long enough that a wrong rope or kernel shows, short enough to cost seconds
GREEDY_METRICS = ("greedy_exact_share", "greedy_prefix_mean", "greedy_top1")
# what a greedy pass can fail with (KeyError, TypeError: an answer not as documented): its figures
# go missing with the reason, the case's speed figures stay
GREEDY_ERRORS = (httpx.HTTPError, ValueError, KeyError, TypeError)


def tokenize(endpoint: Endpoint, text: str) -> list[int]:
    """`text` as llama-server's `/tokenize` gives it, with the model's BOS where it uses one."""
    with endpoint.client() as client:
        answer = client.post("/tokenize", json={"content": text, "add_special": True})
        answer.raise_for_status()
    return [int(t) for t in answer.json()["tokens"]]


def generate(endpoint: Endpoint, prompts: Sequence[Sequence[int]], tokens: int) -> list[list[int]]:
    """Greedy token ids for each prompt, one request at a time, from llama-server's own
    `/completion` (its OpenAI API streams text only: the ids come back with `return_tokens` there)."""
    out = []
    with endpoint.client() as client:
        for index, prompt in enumerate(prompts):
            answer = client.post("/completion", json={"prompt": list(prompt), "n_predict": tokens, "temperature": 0, "seed": SEED,
                                                      "ignore_eos": True, "cache_prompt": False, "return_tokens": True})
            if answer.status_code != 200:
                raise ValueError(f"greedy request {index}: HTTP {answer.status_code}: {answer.text.strip()[:300]}")
            ids = [int(t) for t in answer.json()["tokens"]]
            if len(ids) != tokens:
                raise ValueError(f"greedy request {index}: {len(ids)} token ids returned, {tokens} asked")
            out.append(ids)
    return out


def prefix(got: Sequence[int], want: Sequence[int]) -> int:
    """How many leading tokens agree."""
    n = 0
    for a, b in zip(got, want):
        if a != b:
            break
        n += 1
    return n


def check(endpoint: Endpoint, reference: Mapping[str, Any]) -> dict[str, Any]:
    """The server's greedy answers to the reference's prompts, and its top-1 agreement with the
    reference at every position (teacher forcing past the first difference)."""
    prompts, want = reference["prompts"], reference["tokens"]
    got = generate(endpoint, prompts, int(reference["k"]))
    agree = 0
    for prompt, mine, theirs in zip(prompts, got, want):
        matched = prefix(mine, theirs)
        agree += matched
        forced = [list(prompt) + list(theirs[:j]) for j in range(matched + 1, len(theirs))]
        agree += sum(g[:1] == [theirs[len(f) - len(prompt)]] for f, g in zip(forced, generate(endpoint, forced, 1)))
    return {"tokens": got, "top1_agree": agree, "positions": sum(len(t) for t in want)}


def metrics(result: Mapping[str, Any] | None, reason: str) -> list[Metric]:
    """The three greedy figures of a `check` result (with its "reference"), or each missing with `reason`."""
    if result is None:
        return [Metric.missing("greedy_exact_share", "%", reason), Metric.missing("greedy_prefix_mean", "tokens", reason),
                Metric.missing("greedy_top1", "%", reason)]
    want = result["reference"]["tokens"]
    prefixes = [prefix(g, w) for g, w in zip(result["tokens"], want)]
    exact = sum(p == len(w) for p, w in zip(prefixes, want))
    return [Metric("greedy_exact_share", 100.0 * exact / len(want), "%"),
            Metric("greedy_prefix_mean", sum(prefixes) / len(want), "tokens", samples=tuple(float(p) for p in prefixes)),
            Metric("greedy_top1", 100.0 * result["top1_agree"] / result["positions"], "%")]

"""The stub's vLLM fields (``logprob_token_ids``, ``prompt_logprobs``) and tokenizer
routes, through the real ``openai`` SDK."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from skllmprob.testing import OpenAIStub

PROMPT = "Review: a wonderful film\nSentiment:"


@pytest.fixture
def vllm():
    with OpenAIStub(vllm=True) as s:
        yield s


def _client(stub):
    return openai.OpenAI(base_url=stub.base_url, api_key="x", max_retries=0)


def _tokenize(stub, text):
    req = urllib.request.Request(
        stub.url + "/tokenize",
        data=json.dumps({"model": "m", "prompt": text, "add_special_tokens": False}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        out = json.loads(r.read())
    assert out["count"] == len(out["tokens"]) and out["max_model_len"] > 0
    return out["tokens"]


def _expected(stub, text, token):
    return dict(stub.distribution(text)).get(token, -9999.0)


def test_logprob_token_ids_on_completions(vllm):
    ids = [_tokenize(vllm, " wonderful")[0], _tokenize(vllm, " zebra")[0]]
    r = _client(vllm).completions.create(
        model="m", prompt=PROMPT, max_tokens=1, logprobs=1, extra_body={"logprob_token_ids": ids}
    )
    top = r.choices[0].logprobs.top_logprobs[0]
    sampled = r.choices[0].logprobs.tokens[0]
    assert list(top) == [sampled, " wonderful", " zebra"]
    assert top[" wonderful"] == pytest.approx(_expected(vllm, PROMPT, " wonderful"))
    assert top[" zebra"] == -9999.0  # outside the stub model's support


def test_logprob_token_ids_on_chat(vllm):
    ids = _tokenize(vllm, " wonderful")
    r = _client(vllm).chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=1,
        logprobs=True,
        top_logprobs=0,
        extra_body={"logprob_token_ids": ids},
    )
    first = r.choices[0].logprobs.content[0]
    assert [t.token for t in first.top_logprobs] == [first.token, " wonderful"]
    assert first.top_logprobs[1].logprob == pytest.approx(_expected(vllm, PROMPT, " wonderful"))


def test_logprob_token_ids_need_logprobs(vllm):
    with pytest.raises(openai.BadRequestError, match="requires logprobs"):
        _client(vllm).chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=1,
            extra_body={"logprob_token_ids": [10]},
        )


def test_a_server_without_the_fields_answers_400():
    with OpenAIStub() as stub:
        for field, value in (("logprob_token_ids", [10]), ("prompt_logprobs", 0)):
            with pytest.raises(openai.BadRequestError, match=f"argument supplied: {field}"):
                _client(stub).completions.create(
                    model="m", prompt=PROMPT, max_tokens=1, logprobs=1, extra_body={field: value}
                )
        with urllib.request.urlopen(stub.url + "/v1/models") as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            _tokenize(stub, "x")
        assert e.value.code == 404


def test_prompt_logprobs_score_a_continuation(vllm):
    prompt_ids = _tokenize(vllm, PROMPT)
    label_ids = _tokenize(vllm, " wonderful film")
    r = _client(vllm).completions.create(
        model="m",
        prompt=prompt_ids + label_ids,
        max_tokens=1,
        logprobs=0,
        extra_body={"prompt_logprobs": 0},
    )
    entries = r.choices[0].model_extra["prompt_logprobs"]
    assert entries[0] is None and len(entries) == len(prompt_ids) + len(label_ids)
    tail = entries[len(prompt_ids) :]
    got = [e[str(i)]["logprob"] for e, i in zip(tail, label_ids, strict=True)]
    assert [e[str(i)]["decoded_token"] for e, i in zip(tail, label_ids, strict=True)] == [
        " wonderful",
        " film",
    ]
    assert got[0] == pytest.approx(_expected(vllm, PROMPT, " wonderful"))
    assert got[1] == pytest.approx(_expected(vllm, PROMPT + " wonderful", " film"))
    assert vllm.prompt_requests[PROMPT + " wonderful film"] == 1

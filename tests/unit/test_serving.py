"""Serving as evaluated, with the real tokenizer and a tiny random model: the decoding saved with
the model makes plain `generate`, the evaluation's batched generation and `tunegraph chat`'s
streaming give the same answer."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stages.evaluation import generate
from stages.model_source import _smollm2_tokenizer, tiny_random_model
from stages.serving import _Printer, decode_answer, stream_reply, write_generation_config

CONVS = [
    [{"role": "user", "content": "Explain `json.dumps`."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}],
]
# A random model repeats one whitespace token; a huge penalty makes it say 12 different ones.
DECODING = {"max_new_tokens": 12, "repetition_penalty": 1e6}


def test_saved_decoding_gives_the_evaluations_answers_to_generate_and_to_the_stream(tmp_path):
    tok = _smollm2_tokenizer()
    tiny_random_model(len(tok)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    said = write_generation_config(tmp_path, DECODING)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert {k: saved[k] for k in ("do_sample", "max_new_tokens", "repetition_penalty")} == {
        "do_sample": False, **DECODING
    }  # fmt: skip
    assert (saved["eos_token_id"], saved["pad_token_id"]) == (tok.eos_token_id, tok.pad_token_id)
    assert said["eos_token"] == "<|im_end|>" and said["do_sample"] is False

    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(tmp_path).eval(),
        AutoTokenizer.from_pretrained(tmp_path),
    )
    evaluated = generate(model, tokenizer, CONVS, batch_size=2, **DECODING)  # left-padded batch of two
    for conv, expected in zip(CONVS, evaluated, strict=True):
        chunks: list[str] = []
        reply = stream_reply(model, tokenizer, conv, write=chunks.append)
        assert len(reply.text.split()) >= 4 and reply.text == expected["text"]
        assert "".join(chunks) == reply.text and len(chunks) > 3  # written as it came, not at the end
        assert len(reply.tokens) == 12 and not reply.stopped
        # Plain transformers, nothing passed but the prompt: the same tokens.
        inputs = tokenizer.apply_chat_template(
            conv, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        plain = model.generate(**inputs)[0, inputs["input_ids"].shape[1] :].tolist()
        assert plain == reply.tokens


def test_an_answer_is_cut_at_eos_and_stripped():
    tok = _smollm2_tokenizer()
    ids = tok(" Serialize obj. ", add_special_tokens=False)["input_ids"]
    assert decode_answer(tok, [*ids, tok.eos_token_id, *ids]) == ("Serialize obj.", True)
    assert decode_answer(tok, ids) == ("Serialize obj.", False)


def test_the_stream_holds_back_a_character_split_across_tokens():
    tok = _smollm2_tokenizer()
    ids = tok("Grüße 🦙 done", add_special_tokens=False)["input_ids"]
    assert len(ids) > len(["Grüße", "🦙", "done"])  # the emoji and umlauts span several byte tokens
    written: list[str] = []
    printer = _Printer(tok, written.append)
    printer.put(torch.tensor([[1, 2, 3]]))  # the prompt, which generate() hands over first
    for token in ids:
        printer.put(torch.tensor([token]))
    printer.end()
    assert "".join(written) == "Grüße 🦙 done" and not any("\ufffd" in w for w in written)

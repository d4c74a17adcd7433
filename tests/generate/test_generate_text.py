"""``generate`` on a scripted model: prompt forms, EOS per row, stop strings, streaming, errors."""
import pytest
import torch

from llmkit.generate import GenerationResult, generate
from llmkit.generate.prompts import encode_prompts, left_pad


def test_single_string_returns_its_text_and_ids(tokenizer, scripted):
    model = scripted(tokenizer, "Hello", [" world. The end"])
    out = generate(model, tokenizer, "Hello", max_new_tokens=30)
    assert isinstance(out, GenerationResult)
    assert out.text == " world. The end"
    assert out.finish_reasons == ["stop"]
    assert out.token_ids[0][-1] == tokenizer.eos_id  # the EOS is kept in the ids, not in the text
    assert tokenizer.decode(out.token_ids[0][:-1]) == out.text


def test_rows_of_a_batch_end_independently(tokenizer, scripted):
    prompts = ["Hello", "The quick brown fox"]
    model = scripted(tokenizer, prompts, [" hi", " jumps over the lazy dog"])
    out = generate(model, tokenizer, prompts, max_new_tokens=4)
    assert out.texts[0] == " hi" and out.finish_reasons[0] == "stop"
    assert out.finish_reasons[1] == "length" and len(out.token_ids[1]) == 4
    with pytest.raises(ValueError, match="texts"):
        out.text


def test_stop_string_spanning_tokens_cuts_the_text_exactly(tokenizer, scripted):
    text = " world. END of story."
    model = scripted(tokenizer, "Hello", [text])
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = [tokenizer.decode([i]) for i in ids]
    assert "ld. E" not in pieces and not any("ld. E" in p for p in pieces)  # really spans tokens
    out = generate(model, tokenizer, "Hello", stop="ld. E", max_new_tokens=30)
    assert out.text == " wor" and out.finish_reasons == ["stop"]
    # the ids go up to the token that completed the stop string
    assert "ld. E" in tokenizer.decode(out.token_ids[0]) and "ld. E" not in tokenizer.decode(out.token_ids[0][:-1])


def test_stop_string_in_the_last_allowed_token_counts_as_a_stop(tokenizer, scripted):
    text = " world. END of story."
    model = scripted(tokenizer, "Hello", [text])
    n = len(tokenizer.encode(" world. END", add_special_tokens=False))
    out = generate(model, tokenizer, "Hello", stop="END", max_new_tokens=n)
    assert out.text == " world. " and out.finish_reasons == ["stop"] and len(out.token_ids[0]) == n


def test_stop_token_id_ends_the_row_and_is_not_in_the_text(tokenizer, scripted):
    text = " world. END of story."
    model = scripted(tokenizer, "Hello", [text])
    dot = tokenizer.encode(".", add_special_tokens=False)[0]
    out = generate(model, tokenizer, "Hello", stop=[dot], max_new_tokens=30)
    assert out.text == " world" and out.token_ids[0][-1] == dot


def test_streamed_deltas_hold_back_a_possible_stop_and_add_up_to_the_text(tokenizer, scripted):
    text = " world. The quick brown fox. END of story."
    model = scripted(tokenizer, "Hello", [text])
    deltas = list(generate(model, tokenizer, "Hello", stop=[". END"], max_new_tokens=40, stream=True))
    assert all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas) == " world. The quick brown fox"


def test_streaming_never_splits_a_multibyte_character(tokenizer, scripted):
    text = " Emoji 🤗 and café"
    assert len(tokenizer.encode("🤗", add_special_tokens=False)) > 1  # the emoji spans byte tokens
    model = scripted(tokenizer, "Hello", [text])
    deltas = list(generate(model, tokenizer, "Hello", max_new_tokens=40, stream=True))
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert any("🤗" in d for d in deltas)


def test_batch_stream_yields_indexed_deltas(tokenizer, scripted):
    prompts = ["Hello", "The quick brown fox"]
    outputs = [" world. END", " jumps over the lazy dog"]
    model = scripted(tokenizer, prompts, outputs)
    pieces = {0: "", 1: ""}
    for i, delta in generate(model, tokenizer, prompts, max_new_tokens=30, stream=True, stop=" END"):
        pieces[i] += delta
    assert pieces == {0: " world.", 1: outputs[1]}


def test_chat_messages_are_rendered_with_the_template(tokenizer, scripted):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rows, single = encode_prompts(tokenizer, chat)
    assert single and rows[0] == tokenizer.apply_chat_template(chat, tokenize=True)
    assert tokenizer.decode(rows[0]).endswith("<|im_start|>assistant\n")
    batch = [chat, [{"role": "user", "content": "The quick brown fox"}]]
    model = scripted(tokenizer, batch, [" Hello", " world"])
    assert generate(model, tokenizer, batch, max_new_tokens=10).texts == [" Hello", " world"]


def test_left_pad_aligns_rows_on_the_right():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_bad_inputs_are_rejected(tokenizer, scripted):
    model = scripted(tokenizer, "Hello", [" world"])
    with pytest.raises(ValueError, match="no prompts"):
        generate(model, tokenizer, [])
    with pytest.raises(ValueError, match="no tokens"):
        generate(model, tokenizer, "")
    with pytest.raises(ValueError, match="neither"):
        generate(model, tokenizer, [3])
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tokenizer, "Hello", top_p=0)
    with pytest.raises(ValueError, match="streaming"):
        generate(model, tokenizer, "Hello", num_beams=2, stream=True)
    with pytest.raises(ValueError, match="does not sample"):
        generate(model, tokenizer, "Hello", num_beams=2, temperature=0.5)
    with pytest.raises(ValueError, match="context"):
        generate(model, tokenizer, "Hello world. " * 60)


def test_beam_search_text_excludes_the_eos(tokenizer, scripted):
    model = scripted(tokenizer, "Hello", [" world"])
    out = generate(model, tokenizer, "Hello", num_beams=2, max_new_tokens=10)
    assert out.text == " world" and out.finish_reasons == ["stop"] and out.token_ids[0][-1] == tokenizer.eos_id

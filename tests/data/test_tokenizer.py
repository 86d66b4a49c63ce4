from amylum.data.tokenizer import add_placeholder_tokens, build_demo_tokenizer, load_tokenizer


def test_demo_tokenizer_specials_and_roundtrip(tokenizer, tmp_path):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    for ph in ("<image>", "<audio>"):
        assert tokenizer(ph, add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(ph)]
    text = "What digit is this? Ünïcode ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: nothing is unknown
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.convert_tokens_to_ids("<audio>") == tokenizer.convert_tokens_to_ids("<audio>")


def test_add_placeholder_tokens_only_adds_missing():
    tok = build_demo_tokenizer(["hello world"], placeholders=["<image>"])
    n = len(tok)
    assert add_placeholder_tokens(tok, ["<image>", "<audio>"]) == 1 and len(tok) == n + 1
    assert tok("a<audio>b", add_special_tokens=False)["input_ids"][1] == n

"""Strings from data or the workspace cannot drive the terminal: controls and bidi overrides are shown escaped."""

from vitsae_tui.engine.text import MAX_SHOWN, shown


def test_terminal_controls_are_shown_escaped():
    clipboard = "\x1b]52;c;Y3VybA==\x07"  # OSC 52: set the user's clipboard
    assert shown(f"a{clipboard}b") == "a\\x1b]52;c;Y3VybA==\\x07b"
    assert shown("\x1b[2J\x1b]2;title\x07") == "\\x1b[2J\\x1b]2;title\\x07"
    assert shown("\x9b31m") == "\\x9b31m"  # the 8-bit CSI some terminals honour
    assert all(char.isprintable() for char in shown("x\x00\x1b\x7f\x85\u2028y"))


def test_bidi_overrides_and_line_breaks_cannot_disguise_a_name():
    assert shown("invoice\u202egnp.exe") == "invoice\\u202egnp.exe"
    assert shown("first\nsecond\rthird") == "first\\nsecond\\rthird"


def test_ordinary_text_markup_lookalikes_and_unicode_pass_unchanged():
    for text in ("warm circle", "[/]a[@click=app.quit]b", "chat noir 🐈", "naïve – 猫"):
        assert shown(text) == text


def test_long_names_are_elided_and_the_work_is_bounded():
    assert shown("x" * MAX_SHOWN) == "x" * MAX_SHOWN
    long = shown("y" * 10_000_000)
    assert len(long) == MAX_SHOWN and long.endswith("…")
    assert len(shown("\x1b" * 100, limit=50)) == 50

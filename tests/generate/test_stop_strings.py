"""StopStrings: earliest match, incremental search, and the held-back tail while streaming."""
from llmkit.generate.stop import StopStrings


def test_find_returns_the_earliest_match_of_any_stop():
    stops = StopStrings(["END", "\n\n", ""])
    assert stops.stops == ("END", "\n\n")
    assert stops.find("abc\n\nxyz END") == 3
    assert stops.find("no stop here") == -1


def test_incremental_search_finds_a_match_spanning_the_old_and_new_text():
    stops = StopStrings(["world"])
    text = "hello wor"
    assert stops.find(text, 0) == -1
    text += "ld!"
    assert stops.find(text, start=9) == 6


def test_incremental_search_ignores_matches_wholly_in_old_text():
    stops = StopStrings(["ab"])
    assert stops.find("ab and more", start=8) == -1  # "ab" ended long before the new text


def test_holdback_is_the_longest_suffix_that_starts_a_stop():
    stops = StopStrings(["\n\n", "STOP"])
    assert stops.holdback("hello\n") == 1
    assert stops.holdback("hello ST") == 2
    assert stops.holdback("hello STO") == 3
    assert stops.holdback("hello") == 0
    assert StopStrings().holdback("anything") == 0
    assert not StopStrings([""])

"""Annotation loaders on the real bundled files: official counts, anomaly policy, clear errors on broken files."""

import json
import logging

import pytest

from open_r1.data import (
    ANNOTATIONS_DIR,
    DATASETS,
    load_annotations,
    load_split,
    normalize_query,
    split_path,
)

TALL_DIR = ANNOTATIONS_DIR / "charades_sta" / "tall"


@pytest.fixture(scope="module")
def splits():
    """Every bundled split loaded once: (dataset, split) -> (rows, stats)."""
    return {(name, split): load_split(name, split, return_stats=True) for name in DATASETS for split in DATASETS[name]}


# (dataset, split, queries, videos): the official split sizes.
OFFICIAL_COUNTS = [
    ("charades", "train", 12408, 5338),
    ("charades", "test", 3720, 1334),
    ("activitynet", "val_1", 17505, 4917),
    ("activitynet", "val_2", 17031, 4885),  # TimeZero's ActivityNet test set
    ("charades_cd", "test_iid", 823, 333),
    ("charades_cd", "test_ood", 3375, 1442),
    ("charades_cg", "novel_composition", 3442, 2480),
    ("charades_cg", "novel_word", 695, 580),
    ("charades_cg", "test_trivial", 3096, 1689),
]


@pytest.mark.parametrize("dataset, split, num_queries, num_videos", OFFICIAL_COUNTS)
def test_official_counts(splits, dataset, split, num_queries, num_videos):
    rows, stats = splits[dataset, split]
    assert len(rows) == stats.num_queries == num_queries
    assert len({row["video_id"] for row in rows}) == stats.num_videos == num_videos


def test_activitynet_train_official_count_and_training_filter(splits):
    # The file holds the official 37,421 queries; the training split drops the 2 zero-length ones (IoU 0 for all).
    rows, stats = load_annotations(split_path("activitynet", "train"), return_stats=True)
    assert len(rows) == 37421 and len({r["video_id"] for r in rows}) == 10009
    train_rows, train_stats = splits["activitynet", "train"]
    assert len(train_rows) == 37419
    assert train_stats.zero_length == train_stats.zero_length_dropped == 2
    assert sorted(train_stats.anomalies["zero_length_dropped"]) == sorted(stats.anomalies["zero_length"])
    assert {r["query_id"] for r in rows} - {r["query_id"] for r in train_rows} == set(stats.anomalies["zero_length"])


def test_rows_follow_the_contract(splits):
    keys = {"video_id", "query_id", "query", "raw_query", "start", "end", "duration", "windows"}
    for (dataset, split), (rows, _) in splits.items():
        assert len({row["query_id"] for row in rows}) == len(rows), f"{dataset}/{split}: query ids not unique"
        for row in rows:
            assert set(row) == keys
            assert row["query_id"].startswith(row["video_id"] + "#")
            assert row["query"] == normalize_query(row["raw_query"])
            assert 0 <= row["start"] <= row["end"] and row["duration"] > 0
            assert row["windows"] == [[row["start"], row["end"]]]


def test_charades_first_rows(splits):
    rows, _ = splits["charades", "train"]
    assert rows[0] == {
        "video_id": "AO8RW",
        "query_id": "AO8RW#0",
        "query": "a person is putting a book on a shelf",
        "raw_query": "a person is putting a book on a shelf.",
        "start": 0.0,
        "end": 6.9,
        "duration": 33.75,
        "windows": [[0.0, 6.9]],
    }


@pytest.mark.parametrize("split, json_split", [("train", "train"), ("test", "test")])
def test_tall_txt_matches_timezero_json(splits, split, json_split):
    tall = load_annotations(TALL_DIR / f"charades_sta_{split}.txt")
    timezero, _ = splits["charades", json_split]
    as_tuples = lambda rows: [(r["query_id"], r["start"], r["end"], r["query"]) for r in rows]  # noqa: E731
    assert as_tuples(tall) == as_tuples(timezero)


def test_tall_durations_come_from_the_charades_csv(tmp_path):
    rows = load_annotations(TALL_DIR / "charades_sta_test.txt")
    assert rows[0]["video_id"] == "3MSZA" and rows[0]["duration"] == 30.96  # CSV `length` of 3MSZA
    # An explicit CSV overrides the bundled ones.
    (tmp_path / "a.txt").write_text("3MSZA 24.3 30.4##person turn a light on.\n")
    (tmp_path / "len.csv").write_text("id,length\n3MSZA,99.5\n")
    (row,) = load_annotations(tmp_path / "a.txt", durations_csv=tmp_path / "len.csv")
    assert row["duration"] == 99.5 and row["query"] == "person turn a light on"


def test_charades_anomalies(splits):
    _, train = splits["charades", "train"]
    assert train.reversed_swapped == 4
    assert sorted(train.anomalies["reversed_swapped"]) == ["AKKWU#0", "AKKWU#1", "IOL8Q#0", "LEOL6#0"]
    assert train.end_beyond_duration == 1789
    _, test = splits["charades", "test"]
    assert test.end_beyond_duration == 562 and test.reversed_swapped == 0
    rows, _ = splits["charades", "train"]
    by_id = {r["query_id"]: r for r in rows}
    # Swapped, and the end beyond the 12.27 s video is kept, not clipped.
    assert (by_id["AKKWU#0"]["start"], by_id["AKKWU#0"]["end"], by_id["AKKWU#0"]["duration"]) == (13.0, 38.0, 12.27)
    assert (by_id["LEOL6#0"]["start"], by_id["LEOL6#0"]["end"]) == (7.0, 8.0)


def test_end_beyond_duration_is_kept_for_evaluation(splits):
    rows, stats = splits["charades", "test"]
    beyond = [r for r in rows if r["end"] > r["duration"]]
    assert len(beyond) == 562 and max(r["end"] - r["duration"] for r in beyond) <= 1.5 + 1e-9


def test_activitynet_anomalies(splits):
    _, train = splits["activitynet", "train"]
    assert train.anomalies["reversed_swapped"] == ["v_0bosp4-pyTM#3", "v_rhOtqArO-3Y#5"]
    assert train.anomalies["zero_length"] == ["v_N7ppHQNikv8#2", "v_4rKTw99bM8g#1"]
    rows = {r["query_id"]: r for r in splits["activitynet", "train"][0]}
    assert (rows["v_0bosp4-pyTM#3"]["start"], rows["v_0bosp4-pyTM#3"]["end"]) == (60.71, 61.29)
    assert (rows["v_rhOtqArO-3Y#5"]["start"], rows["v_rhOtqArO-3Y#5"]["end"]) == (150.31, 173.44)
    # Leading/trailing spaces and non-ASCII sentences per split (train / val_1 / val_2).
    assert [splits["activitynet", s][1].outer_whitespace for s in ("train", "val_1", "val_2")] == [25731, 11639, 11483]
    assert [splits["activitynet", s][1].non_ascii for s in ("train", "val_1", "val_2")] == [24, 24, 8]
    # ActivityNet ends exceed the duration only by float rounding (<= 0.01 s): 29 / 5 / 1.
    assert [splits["activitynet", s][1].end_beyond_duration for s in ("train", "val_1", "val_2")] == [29, 5, 1]


def test_activitynet_text_is_normalised_but_raw_text_kept(splits):
    rows, _ = splits["activitynet", "val_2"]
    second = rows[1]
    assert second["raw_query"].startswith(" One man is holding")
    assert second["query"].startswith("one man is holding")
    pinata = [r for r in splits["activitynet", "train"][0] if "piñata" in r["query"]]
    assert pinata and all("piñata" in r["raw_query"].lower() for r in pinata)


def test_reversed_and_zero_length_in_a_user_file(tmp_path, caplog):
    path = tmp_path / "anno.json"
    data = {
        "vid": {"duration": 10.0, "timestamps": [[5.0, 2.0], [3.0, 3.0], [1.0, 11.0]], "sentences": ["a.", "b", "c"]}
    }
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="open_r1.data"):
        rows, stats = load_annotations(path, return_stats=True)
    assert [(r["start"], r["end"]) for r in rows] == [(2.0, 5.0), (3.0, 3.0), (1.0, 11.0)]
    assert (stats.reversed_swapped, stats.zero_length, stats.end_beyond_duration) == (1, 1, 1)
    assert "reversed segments swapped: 1" in caplog.text and "zero-length segments: 1" in caplog.text
    assert [r["query_id"] for r in load_annotations(path, drop_zero_length=True)] == ["vid#0", "vid#2"]


def test_several_windows_per_query(tmp_path):
    path = tmp_path / "qv.json"
    path.write_text(
        json.dumps({"q": {"duration": 150, "timestamps": [[[2, 4], [10, 20]]], "sentences": ["Dog runs"]}})
    )
    (row,) = load_annotations(path)
    assert row["windows"] == [[2.0, 4.0], [10.0, 20.0]] and (row["start"], row["end"]) == (2.0, 4.0)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("a person is putting a book on a shelf.", "a person is putting a book on a shelf"),  # Charades: drop the '.'
        (" One man is holding onto a rope.", "one man is holding onto a rope"),  # ActivityNet leading space
        ("person sits  to  put on shoes.", "person sits  to  put on shoes"),  # inner spaces kept, as the paper
        ("They hit the piñata.", "they hit the piñata"),  # non-ASCII kept
        ("Wait...", "wait.."),  # only one final dot
        ("person opens the door .", "person opens the door "),  # only the dot goes, as in the paper
        ("person opens the door", "person opens the door"),  # already normal
        ("\tA MAN SMILES. ", "a man smiles"),  # tabs and trailing space
    ],
)
def test_normalize_query(raw, expected):
    assert normalize_query(raw) == expected
    if not expected.endswith((".", " ")):  # one dot per call, as in training: "wait.." loses another one
        assert normalize_query(expected) == expected


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


GOOD = {"duration": 10.0, "timestamps": [[1.0, 2.0]], "sentences": ["a"]}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", '{"a": {"duration": 1,', "invalid JSON"),
        ("list.json", [GOOD], "unknown annotation format"),
        ("empty.json", {}, "no annotations"),
        ("shape.json", {"ok": GOOD, "bad": [1, 2]}, "record 'bad': expected an object"),
        (
            "nodur.json",
            {"ok": GOOD, "bad": {"timestamps": [], "sentences": []}},
            "record 'bad': missing key(s) ['duration']",
        ),
        ("nosent.json", {"bad": {"duration": 3, "timestamps": [[0, 1]]}}, "missing key(s) ['sentences']"),
        ("len.json", {"bad": {**GOOD, "sentences": ["a", "b"]}}, "record 'bad': 1 timestamps but 2 sentences"),
        ("nan.json", {"bad": {**GOOD, "timestamps": [["x", 2]]}}, "record 'bad', query 0: start must be a number"),
        ("str.json", {"bad": {**GOOD, "timestamps": [["1.0", 2]]}}, "start must be a number, got '1.0'"),
        ("lines.json", json.dumps({"a": GOOD}) + "\n" + json.dumps({"b": GOOD}), "JSON Lines files are not supported"),
        ("inf.json", {"bad": {**GOOD, "timestamps": [[0, float("inf")]]}}, "end must be finite"),
        ("pair.json", {"bad": {**GOOD, "timestamps": [[1, 2, 3]]}}, "a timestamp must be [start, end]"),
        ("dur.json", {"bad": {**GOOD, "duration": "long"}}, "record 'bad': duration must be a number"),
        ("sent.json", {"bad": {**GOOD, "sentences": [7]}}, "sentence must be a string"),
        ("blank.json", {"bad": {**GOOD, "sentences": [" . "]}}, "empty sentence"),
        ("dup.json", '{"v": {"duration": 1, "timestamps": [], "sentences": []}, "v": {}}', "duplicate key 'v'"),
        ("notes.txt", "hello world\n", "unknown annotation format"),
        ("tall.txt", "AO8RW 0.0 6.9##a person.\nAO8RW zero 6.9##a person.\n", "line 2 (video 'AO8RW'): start must be"),
        (
            "tall2.txt",
            "AO8RW 0.0 6.9##a person.\nAO8RW 0.0 6.9 a person\n",
            "line 2: expected 'VID START END##sentence'",
        ),
        ("tall3.txt", "NOSUCHVIDEO 0.0 6.9##a person.\n", "video not found in the durations CSV"),
    ],
)
def test_malformed_files_raise_clear_errors(tmp_path, name, content, message):
    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError) as error:
        load_annotations(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_annotations(tmp_path / "nope.json")
    tall = _write(tmp_path, "a.txt", "AO8RW 0.0 6.9##a person.\n")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_annotations(tall, durations_csv=tmp_path / "missing.csv")
    bad_csv = _write(tmp_path, "bad.csv", "id,seconds\nAO8RW,3\n")
    with pytest.raises(ValueError, match="missing column"):
        load_annotations(tall, durations_csv=bad_csv)


def test_unknown_dataset_or_split_lists_valid_names():
    with pytest.raises(ValueError, match="activitynet, charades, charades_cd, charades_cg"):
        load_split("kinetics", "train")
    with pytest.raises(ValueError, match="known splits: train, test"):
        load_split("charades", "val")
    with pytest.raises(ValueError, match="evaluation split"):
        load_split("activitynet", "val_2", drop_zero_length=True)


def test_bundled_paths_live_inside_the_package():
    for name, split_files in DATASETS.items():
        for split in split_files:
            path = split_path(name, split)
            assert path.is_file() and ANNOTATIONS_DIR in path.parents
    assert "shared" not in ANNOTATIONS_DIR.parts


def test_an_annotation_folder_is_named_as_a_folder(tmp_path):
    from open_r1.data import load_annotations

    with pytest.raises(IsADirectoryError, match=r"annotation file is a folder, not a file: .*give the \.json"):
        load_annotations(tmp_path)  # before: "annotation file not found" for a folder that exists
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        load_annotations(tmp_path / "missing.json")

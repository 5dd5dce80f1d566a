"""Readers of pairs, embeddings and qualities; name matching; errors that name the file and
line; one dataset evaluated end to end from files."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from synfiqa.errors import DataFileError
from synfiqa.stages.s8_evaluate import evaluate_dataset, read_embeddings, read_pairs, read_quality
from synfiqa.stages.s8_evaluate.inputs import NameIndex, embedding_table, quality_table
from synfiqa.stages.s8_evaluate.pairs import read_insightface_bin, write_insightface_bin


def write(path, text):
    path.write_text(text)
    return path


# ---------------------------------------------------------------- pairs


def test_csv_pairs(tmp_path):
    pairs = read_pairs(write(tmp_path / "p.csv", "image_a,image_b,genuine\na.jpg,b.jpg,1\n\nc.jpg,a.jpg,0\nb.jpg,c.jpg,true\n"))
    assert pairs.format == "csv" and len(pairs) == 3
    assert pairs.image_a == ["a.jpg", "c.jpg", "b.jpg"] and pairs.image_b == ["b.jpg", "a.jpg", "c.jpg"]
    assert pairs.genuine.tolist() == [True, False, True]
    assert pairs.lines.tolist() == [2, 4, 5]          # the blank line counts
    assert pairs.image_names() == ["a.jpg", "b.jpg", "c.jpg"]


def test_fast_and_careful_csv_paths_agree(tmp_path):
    from synfiqa.stages.s8_evaluate.pairs import _parse_simple_csv, parse_csv

    text = "image_a,image_b,genuine\n" + "".join(f"p{i}/a.jpg, p{i % 7}/b.jpg ,{'yes' if i % 3 else 0}\n" for i in range(50))
    fast = _parse_simple_csv(text, "p.csv")
    careful = parse_csv(text.replace(",", ',"', 1).replace("image_b", 'image_b"', 1), "p.csv")  # quoting: careful path
    assert fast is not None and _parse_simple_csv(text + "\n", "p.csv") is None  # a blank line: careful path
    assert (fast.image_a, fast.image_b) == (careful.image_a, careful.image_b)
    assert fast.genuine.tolist() == careful.genuine.tolist() and fast.lines.tolist() == careful.lines.tolist()
    assert fast.image_b[0] == "p0/b.jpg" and fast.genuine[:3].tolist() == [False, True, True]


def test_csv_pairs_with_columns_in_another_order(tmp_path):
    pairs = read_pairs(write(tmp_path / "p.csv", "genuine,image_b,image_a\n0,y.png,x.png\n"))
    assert (pairs.image_a, pairs.image_b, pairs.genuine.tolist()) == (["x.png"], ["y.png"], [False])


def test_lfw_pairs(tmp_path):
    text = "2\t2\nAbel_Pacheco\t1\t4\nAkhmed_Zakayev\t1\t3\nAbdel_Madi_Shabneh\t1\tDean_Barker\t1\nAbdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1\n"
    pairs = read_pairs(write(tmp_path / "pairs.txt", text))
    assert pairs.format == "lfw"
    assert pairs.image_a[0] == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert pairs.image_b[0] == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    assert pairs.image_b[2] == "Dean_Barker/Dean_Barker_0001.jpg"
    assert pairs.genuine.tolist() == [True, True, False, False]
    assert pairs.lines.tolist() == [2, 3, 4, 5]
    xqlfw = read_pairs(tmp_path / "pairs.txt", format="xqlfw")
    assert xqlfw.image_a == pairs.image_a and xqlfw.format == "xqlfw"


def test_whitespace_pair_list(tmp_path):
    pairs = read_pairs(write(tmp_path / "pair_list.txt", "00000.jpg 00001.jpg 1\n00002.jpg 00003.jpg 0\n"))
    assert pairs.format == "list" and pairs.genuine.tolist() == [True, False]


@pytest.mark.parametrize("name, text, message", [
    ("p.txt", "hello world\nfoo\n", r"p.txt line 1: unknown pairs format"),
    ("p.csv", "left,right,same\na,b,1\n", r"p.csv line 1: the header lacks column\(s\) image_a, image_b, genuine"),
    ("p.csv", "image_a,image_b,genuine\na.jpg,b.jpg,1\na.jpg,c.jpg,maybe\n", r"p.csv line 3: genuine must be 1 or 0"),
    ("p.csv", "image_a,image_b,genuine\na.jpg,b.jpg\n", r"p.csv line 2: expected 3 columns"),
    ("p.txt", "10 300\nAbel 1 2\nAbel one two three four\n", r"p.txt line 3: expected 'name n1 n2'"),
    ("p.txt", "", r"p.txt: the pairs file is empty"),
])
def test_bad_pairs_files_name_the_line(tmp_path, name, text, message):
    with pytest.raises(DataFileError, match=message):
        read_pairs(write(tmp_path / name, text))


def test_missing_pairs_file_and_unknown_format(tmp_path):
    with pytest.raises(DataFileError, match="does not exist"):
        read_pairs(tmp_path / "nope.csv")
    write(tmp_path / "p.csv", "image_a,image_b,genuine\na,b,1\n")
    with pytest.raises(DataFileError, match="unknown pairs format 'yaml'"):
        read_pairs(tmp_path / "p.csv", format="yaml")
    (tmp_path / "blob.dat").write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(DataFileError, match="not a text file"):
        read_pairs(tmp_path / "blob.dat")


def png_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((112, 112, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_insightface_bin_round_trip(tmp_path):
    images = [png_bytes(v) for v in (10, 20, 30, 40, 50, 60)]
    write_insightface_bin(tmp_path / "tiny.bin", images, [True, False, True])
    pairs = read_pairs(tmp_path / "tiny.bin")
    assert pairs.format == "bin" and len(pairs) == 3
    assert pairs.image_a == ["00000.jpg", "00002.jpg", "00004.jpg"]
    assert pairs.image_b == ["00001.jpg", "00003.jpg", "00005.jpg"]
    assert pairs.genuine.tolist() == [True, False, True]
    assert pairs.encoded_images["00003.jpg"] == images[3]
    assert pairs.where(1) == f"{tmp_path / 'tiny.bin'} pair 2"


def test_insightface_bin_as_insightface_writes_it(tmp_path):
    # insightface's files hold the images as bytes and issame as a numpy bool array, protocol 2
    images = [png_bytes(v) for v in (1, 2, 3, 4)]
    with open(tmp_path / "agedb_30.bin", "wb") as handle:
        pickle.dump((images, np.array([False, True])), handle, protocol=2)
    pairs = read_insightface_bin(tmp_path / "agedb_30.bin")
    assert pairs.genuine.tolist() == [False, True]


def test_insightface_bin_refuses_code_and_odd_layouts(tmp_path):
    import os

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([Exploit(), b"x"], [True])))
    with pytest.raises(DataFileError, match="not an insightface verification .bin.*refusing"):
        read_pairs(tmp_path / "evil.bin")
    write_insightface_bin(tmp_path / "odd.bin", [png_bytes(1)] * 3, [True])
    with pytest.raises(DataFileError, match="3 images for 1 pairs"):
        read_pairs(tmp_path / "odd.bin")


# ---------------------------------------------------------------- embeddings and qualities


def test_embeddings_are_normalised(tmp_path):
    np.savez(tmp_path / "e.npz", **{"a/x_0001.jpg": np.array([3.0, 4.0]), "b.jpg": np.array([[0.0, 2.0]])})
    table = read_embeddings(tmp_path / "e.npz")
    assert table.names == ["a/x_0001.jpg", "b.jpg"] and table.dimension == 2
    np.testing.assert_allclose(table.vectors, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("vectors, message", [
    ({"a.jpg": np.ones(512), "b.jpg": np.ones(128)}, r"e.npz: embeddings have different dimensions: 'a.jpg' has 512, 'b.jpg' has 128"),
    ({"a.jpg": np.array([1.0, np.nan])}, r"e.npz: the embedding of 'a.jpg' holds NaN"),
    ({"a.jpg": np.zeros(4)}, r"e.npz: the embedding of 'a.jpg' is all zeros"),
    ({"a.jpg": np.ones((2, 3))}, r"e.npz: the embedding of 'a.jpg' has shape \(2, 3\)"),
])
def test_bad_embeddings_name_the_image(tmp_path, vectors, message):
    np.savez(tmp_path / "e.npz", **vectors)
    with pytest.raises(DataFileError, match=message):
        read_embeddings(tmp_path / "e.npz")


def test_embeddings_in_the_compact_table_layout(tmp_path):
    np.savez(tmp_path / "t.npz", names=np.array(["a.jpg", "b.jpg"]), embeddings=np.array([[3.0, 4.0], [0.0, 2.0]]))
    table = read_embeddings(tmp_path / "t.npz")
    assert table.names == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(table.vectors, [[0.6, 0.8], [0.0, 1.0]], rtol=1e-6)
    np.savez(tmp_path / "bad.npz", names=np.array(["a.jpg"]), embeddings=np.ones((2, 3)))
    with pytest.raises(DataFileError, match=r"'names' must be \[M\] strings and 'embeddings' \[M, D\]"):
        read_embeddings(tmp_path / "bad.npz")


def test_not_an_npz(tmp_path):
    write(tmp_path / "e.npz", "not a zip")
    with pytest.raises(DataFileError, match="e.npz: not a readable .npz"):
        read_embeddings(tmp_path / "e.npz")


def test_quality_csv_and_two_column_text(tmp_path):
    table = read_quality(write(tmp_path / "q.csv", "image,quality,reason\na.jpg,0.5,\nb.jpg,-1.25e1,\n"))
    assert table.names == ["a.jpg", "b.jpg"] and table.values.tolist() == [0.5, -12.5]
    table = read_quality(write(tmp_path / "Quality-Scores.txt", "/id0/0.jpg\t0.25\n/id0/1.jpg\t0.75\n"))
    assert table.names == ["/id0/0.jpg", "/id0/1.jpg"] and table.values.tolist() == [0.25, 0.75]


@pytest.mark.parametrize("text, message", [
    ("image,quality\na.jpg,0.5\nb.jpg,nan\n", r"q.csv line 3: the quality of 'b.jpg' is nan"),
    ("image,quality\na.jpg,high\n", r"q.csv line 2: the quality of 'a.jpg' is 'high', not a number"),
    ("image,quality,reason\na.jpg,,no-face\n", r"q.csv line 2: 'a.jpg' has no quality \(no-face\)"),
    ("name,score\na.jpg,1\n", r"q.csv line 1: the header must name columns image and quality"),
    ("image,quality\na.jpg,1\na.jpg,2\n", r"q.csv: image 'a.jpg' appears twice"),
])
def test_bad_quality_files_name_the_line(tmp_path, text, message):
    with pytest.raises(DataFileError, match=message):
        read_quality(write(tmp_path / "q.csv", text))


def test_names_match_across_path_styles():
    index = NameIndex(["/data/lfw/Aaron/Aaron_0001.jpg", "Bob_0002", "./x/y.png", "dup/a.jpg", "other/a.jpg"], "t")
    assert index.find("Aaron/Aaron_0001.jpg") == 0      # by file name
    assert index.find("Bob/Bob_0002.jpg") == 1          # by file name without extension
    assert index.find("x/y.png") == 2                    # "./" dropped
    assert index.find("a.jpg") is None                   # two candidates: ambiguous, so no match
    assert index.find("dup/a.jpg") == 3


# ---------------------------------------------------------------- one dataset end to end


def small_dataset(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"id{i}/{j}.jpg" for i in range(6) for j in range(3)]
    centres = rng.normal(size=(6, 16))
    quality = {n: float(q) for n, q in zip(names, rng.random(len(names)))}
    vectors = {n: centres[k // 3] + rng.normal(size=16) * (0.2 + 1.5 * (1 - quality[n])) for k, n in enumerate(names)}
    rows = [(a, b, int(a.split("/")[0] == b.split("/")[0])) for i, a in enumerate(names) for b in names[i + 1:]]
    write(tmp_path / "pairs.csv", "image_a,image_b,genuine\n" + "".join(f"{a},{b},{g}\n" for a, b, g in rows))
    np.savez(tmp_path / "emb.npz", **vectors)
    write(tmp_path / "q.csv", "image,quality\n" + "".join(f"{n},{q!r}\n" for n, q in quality.items()))
    return names, vectors, quality, rows


def test_swapping_the_images_of_a_pair_changes_nothing(tmp_path):
    _, vectors, quality, rows = small_dataset(tmp_path)
    swapped = tmp_path / "swapped.csv"
    write(swapped, "image_a,image_b,genuine\n" + "".join(f"{b},{a},{g}\n" for a, b, g in rows))
    embeddings, qualities = read_embeddings(tmp_path / "emb.npz"), {"q": read_quality(tmp_path / "q.csv")}
    for protocol in ("A", "B"):
        one = evaluate_dataset("d", read_pairs(tmp_path / "pairs.csv"), embeddings, qualities, protocol, [0.05, 0.01])
        two = evaluate_dataset("d", read_pairs(swapped), embeddings, qualities, protocol, [0.05, 0.01])
        for a, b in zip(one.methods[0].curves, two.methods[0].curves):
            np.testing.assert_array_equal(a.fnmr, b.fnmr)
            assert a.value == b.value


def test_pairs_naming_missing_images_are_an_error_with_the_line(tmp_path):
    names, vectors, quality, rows = small_dataset(tmp_path)
    write(tmp_path / "pairs.csv", "image_a,image_b,genuine\nid0/0.jpg,id0/1.jpg,1\nid0/0.jpg,ghost.jpg,0\nid9/9.jpg,id0/1.jpg,0\n")
    pairs = read_pairs(tmp_path / "pairs.csv")
    with pytest.raises(DataFileError, match=r"pairs.csv line 3: image 'ghost.jpg' is not in .*emb.npz \(1 more"):
        evaluate_dataset("d", pairs, read_embeddings(tmp_path / "emb.npz"), {"q": read_quality(tmp_path / "q.csv")})
    del quality["id0/1.jpg"]
    partial = quality_table(quality, "partial.csv")
    full = embedding_table({**vectors, "ghost.jpg": np.ones(16), "id9/9.jpg": np.ones(16)}, "all.npz")
    with pytest.raises(DataFileError, match=r"pairs.csv line 2: image 'id0/1.jpg' is not in partial.csv"):
        evaluate_dataset("d", pairs, full, {"q": partial})


def test_warnings_are_collected_per_dataset_and_method(tmp_path):
    small_dataset(tmp_path)
    write(tmp_path / "genuine_only.csv", "image_a,image_b,genuine\nid0/0.jpg,id0/1.jpg,1\nid1/0.jpg,id1/2.jpg,1\n")
    result = evaluate_dataset("tiny", read_pairs(tmp_path / "genuine_only.csv"), read_embeddings(tmp_path / "emb.npz"),
                              {"mine": read_quality(tmp_path / "q.csv")})
    assert result.impostor == 0 and np.isnan(result.methods[0].curves[0].value)
    assert result.warnings == ["tiny / mine: protocol A: no impostor pairs, so no threshold can be set for an FMR: "
                               "every number is NaN"]

"""Preparation in shards: whatever the shard count, the sample's chunked and kept-frame files and its part files
are byte for byte those of one chunk and one translate job over the whole sample; bad input is one line and
leaves nothing; and preparing a sample takes bounded memory."""

import bisect
import gzip
import json
import random
import subprocess
import sys

import pytest

from virnucflow import cli
from virnucflow.errors import InputError
from virnucflow.fasta import read_fasta
from virnucflow.shards import (check_and_concatenate, check_records, concatenate, plan_shards, prepare_shard,
                               shard_count, shard_starts)
from virnucflow.split import part_count, part_span, parts_completed_by, split_part, split_parts


def sample_records(n, seed=5):
    """Records of many lengths around the chunk size, lower case, IUPAC codes and an empty record."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        length = rng.choice([0, 1, 120, 299, 300, 301, 500, 501, 1234, 3001]) if i else 700
        alphabet = "ACGT" if i % 5 else "ACGTNRYacgtn"
        records.append((f"r{i}", "".join(rng.choice(alphabet) for _ in range(length))))
    return records


def write_sample(path, records):
    text = "".join(f">{rid} a description\n" + "".join(seq[j:j + 70] + "\n" for j in range(0, len(seq), 70))
                   for rid, seq in records)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode(), mtime=0))
    else:
        path.write_text(text)
    return path


NAMES = ("chunked.fa", "nucleotide.fa", "protein.faa", "ids", "json")


def prepare_shards(fasta, out, shard_bytes, size=300):
    """The workflow's first steps in-process: plan, then prepare each shard; returns the shards' counts."""
    n = plan_shards(fasta, out / "shards", shard_bytes)
    return [prepare_shard(out / "shards", i, size, *(out / f"shard_{i}.{name}" for name in NAMES))
            for i in range(1, n + 1)]


def check_shards(out, n):
    return check_records(*([out / f"shard_{i}.{name}" for i in range(1, n + 1)] for name in ("json", "ids")))


def prepare_in_shards(fasta, out, shard_bytes, size=300, records_per_file=37):
    """The workflow's steps in-process: plan, prepare each shard, check, put them together, cut the parts."""
    n = len(prepare_shards(fasta, out, shard_bytes, size))
    check_shards(out, n)
    for name, target in zip(NAMES, ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa")):
        concatenate([out / f"shard_{i}.{name}" for i in range(1, n + 1)], out / target)
    split_from_shards(out, n, records_per_file)
    return n


def split_from_shards(out, n, records_per_file):
    """The parts as the workflow cuts them: each from the shards that hold it. A part that is whole within the
    first shards is cut as soon as they are known (the workflow asks for it early), from their counts alone."""
    counts = [json.loads((out / f"shard_{i}.json").read_text())["kept_frames"] for i in range(1, n + 1)]
    early = {k: i for i in range(1, n + 1) for k in parts_completed_by(counts[:i], records_per_file)}
    parts = part_count(sum(counts), records_per_file)
    assert set(early) <= set(range(1, parts + 1))
    assert len(early) in (parts, parts - 1)  # all but a last part that is not whole
    for k in range(1, parts + 1):
        first, last, skip = part_span(counts, k, records_per_file)
        if k in early:
            assert early[k] == last and part_span(counts[:last], k, records_per_file) == (first, last, skip)
        shards = range(first, last + 1)
        split_part([out / f"shard_{i}.nucleotide.fa" for i in shards], [out / f"shard_{i}.protein.faa" for i in shards],
                   skip, out / f"parts/output_{k}.fa", out / f"parts/output_{k}.faa", records_per_file)


def prepare_in_one_piece(fasta, out, size=300, records_per_file=37):
    """The steps as they were before sharding: chunk and translate the whole sample, then split."""
    out.mkdir()
    assert cli.main(["chunk", "--size", str(size), str(fasta), str(out / "chunked.fa")]) == 0
    assert cli.main(["translate", str(out / "chunked.fa"), "--nucleotide", str(out / "identified_nucleotide.fa"),
                     "--protein", str(out / "identified_protein.faa")]) == 0
    split_parts(out / "identified_nucleotide.fa", out / "identified_protein.faa", out / "parts", records_per_file)


def files(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and "shard" not in p.relative_to(directory).as_posix()}


@pytest.mark.unit
@pytest.mark.parametrize("name", ["sample.fa", "sample.fa.gz"])
def test_any_shard_count_gives_the_one_piece_files(tmp_path, name):
    fasta = write_sample(tmp_path / name, sample_records(400))
    prepare_in_one_piece(fasta, tmp_path / "whole")
    expected = files(tmp_path / "whole")
    assert len([k for k in expected if k.startswith("parts/")]) > 10
    size = fasta.stat().st_size
    for shard_bytes in (10 * size, size // 7, 4096, 1500):
        out = tmp_path / f"sharded_{shard_bytes}"
        n = prepare_in_shards(fasta, out, shard_bytes)
        assert n == shard_count(size, shard_bytes)
        assert files(out) == expected, shard_bytes
        filled = [i for i in range(1, n + 1) if (out / f"shard_{i}.chunked.fa").stat().st_size]
        assert n == 1 or len(filled) >= 3


def shard_ids(out, i):
    return [row.split("\t")[1].strip() for row in (out / f"shard_{i}.ids").read_text().splitlines()]


@pytest.mark.unit
def test_shards_follow_the_records_position_in_the_file(tmp_path):
    records = [(f"s{i:02d}", "ACGT" * 25) for i in range(100)]  # each record takes 5 + 101 = 106 bytes
    fasta = tmp_path / "s.fa"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))
    # shards start at 0, 132, 265, 530 (together the first 1060 bytes), then every 1060 bytes
    assert shard_starts(10_600, 1060) == [0, 132, 265, 530] + list(range(1060, 10_600, 1060))
    assert len(prepare_shards(fasta, tmp_path, 1060)) == 13
    assert [len(shard_ids(tmp_path, i)) for i in range(1, 5)] == [2, 1, 2, 5]  # records at 0, 106, 212, ...
    for i in range(5, 14):  # then 10 records per shard, in input order
        assert shard_ids(tmp_path, i) == [f"s{j:02d}" for j in range((i - 4) * 10, (i - 3) * 10)]
    assert [rid for i in range(1, 14) for rid in shard_ids(tmp_path, i)] == [rid for rid, _ in records]
    # the count the workflow planned wins (a file that grew since): the records past it go to the last
    assert plan_shards(fasta, tmp_path / "planned", 1060, n=4) == 4
    prepare_shard(tmp_path / "planned", 4, 300, *(tmp_path / f"planned.{name}" for name in NAMES))
    assert len((tmp_path / "planned.ids").read_text().splitlines()) == 95


@pytest.mark.unit
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_byte_ranges_hold_the_records_of_the_sharding_rule(tmp_path, newline):
    """For many shard sizes, each shard read from its byte range holds exactly the records whose header
    starts in it: the shard files that a whole pass over the sample wrote."""
    records = sample_records(40, seed=11)
    text = write_sample(tmp_path / "s.fa", records).read_text().replace("\n", newline)
    fasta = tmp_path / "s.fa"
    fasta.write_bytes(text.encode())
    whole = list(read_fasta(fasta))
    starts = [i for i, c in enumerate(text) if c == ">" and (i == 0 or text[i - 1] in "\r\n")]
    assert len(starts) == len(whole)
    size = len(text)
    for shard_bytes in (7, 97, 500, 1021, size // 3, size - 1, size, 10 * size):
        n, bounds = shard_count(size, shard_bytes), shard_starts(size, shard_bytes)
        expected = [[] for _ in range(n)]
        for record, start in zip(whole, starts):
            expected[bisect.bisect_right(bounds, start) - 1].append(record)
        tally = {}
        got, lines = [], 0
        for i in range(1, n + 1):
            byte_range = (bounds[i - 1], bounds[i] if i < n else None)
            got.append(list(read_fasta(fasta, unique=False, byte_range=byte_range, tally=tally)))
            lines += tally["lines"]
        assert got == expected, shard_bytes
        assert lines == len(text.replace("\r\n", "\n").replace("\r", "\n").splitlines())


@pytest.mark.unit
def test_a_record_across_a_boundary_goes_to_the_shard_where_its_header_starts(tmp_path):
    fasta = tmp_path / "s.fa"
    fasta.write_text(">a\n" + "ACGT" * 30 + "\n>b x\n" + "ACGTA" * 20 + "\n" + "C" * 50 + "\n>c\nGG\n")
    b_at = fasta.read_text().index(">b")
    for cut in range(b_at - 3, b_at + 160, 7):  # before b's header, inside it, inside b's sequence
        first = [r[0] for r in read_fasta(fasta, byte_range=(0, cut))]
        second = [r[0] for r in read_fasta(fasta, byte_range=(cut, None))]
        assert first + second == ["a", "b", "c"], cut
        assert ("b" in first) == (cut > b_at), cut
    b = next(seq for rid, seq in read_fasta(fasta, byte_range=(0, b_at + 1)) if rid == "b")
    assert b == "ACGTA" * 20 + "C" * 50  # read to its end, past the range


def one_piece_error(fasta, tmp_path):
    with pytest.raises(InputError) as caught:
        list(read_fasta(fasta, nucleotide=True))
    return str(caught.value)


@pytest.mark.unit
def test_a_bad_record_fails_its_shard_with_the_one_piece_error_and_leaves_nothing(tmp_path):
    fasta = tmp_path / "bad.fa"
    fasta.write_text(">ok\n" + "ACGT\n" * 300 + ">broken\nACGT\nACGT!ACGT\n>later\nACGT\n")
    expected = one_piece_error(fasta, tmp_path)
    assert "record 'broken' line 304 " in expected
    counts = None
    with pytest.raises(InputError) as caught:
        counts = prepare_shards(fasta, tmp_path / "out", 500)
    assert str(caught.value) == expected and "\n" not in expected and counts is None
    shard = bisect.bisect_right(shard_starts(fasta.stat().st_size, 500), fasta.read_text().index(">broken"))
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert shard == 7 and written == {"shards", *(f"shard_{i}.{name}" for i in range(1, 7) for name in NAMES)}
    nameless = tmp_path / "nameless.fa"
    nameless.write_text(">ok\n" + "ACGT\n" * 300 + ">\nACGT\n")
    with pytest.raises(InputError) as caught:
        prepare_shards(nameless, tmp_path / "nameless", 500)
    assert str(caught.value) == one_piece_error(nameless, tmp_path) == (
        f"{nameless}: line 302 is a header with no id; give every record a name")


@pytest.mark.unit
@pytest.mark.parametrize("name", ["dup.fa", "dup.fa.gz"])
def test_duplicate_ids_in_two_shards_fail_the_sample_with_the_one_piece_error(tmp_path, name):
    records = sample_records(60, seed=3)
    records[47] = ("r12", records[47][1])
    fasta = write_sample(tmp_path / name, records)
    expected = one_piece_error(fasta, tmp_path)
    assert expected.startswith(f"{fasta}: record id 'r12' (line ")
    counts = prepare_shards(fasta, tmp_path, 1500)
    where = [i for i in range(1, len(counts) + 1) if "r12" in shard_ids(tmp_path, i)]
    assert len(where) == 2, where
    with pytest.raises(InputError) as caught:
        check_shards(tmp_path, len(counts))
    assert str(caught.value) == expected
    shards = range(1, len(counts) + 1)
    targets = [tmp_path / "sample" / name for name in NAMES[:3]]
    with pytest.raises(InputError) as caught:  # the sample's files are copied while the ids are checked
        check_and_concatenate([tmp_path / f"shard_{i}.json" for i in shards],
                              [tmp_path / f"shard_{i}.ids" for i in shards],
                              [([tmp_path / f"shard_{i}.{name}" for i in shards], target)
                               for name, target in zip(NAMES, targets)])
    assert str(caught.value) == expected and not any((tmp_path / "sample").iterdir())


@pytest.mark.unit
def test_the_sample_files_are_the_shards_one_after_another_once_the_ids_pass(tmp_path):
    fasta = write_sample(tmp_path / "s.fa", sample_records(300))
    shards = range(1, len(prepare_shards(fasta, tmp_path, 1500)) + 1)
    targets = [tmp_path / "sample" / name for name in NAMES[:3]]
    counts = check_and_concatenate([tmp_path / f"shard_{i}.json" for i in shards],
                                   [tmp_path / f"shard_{i}.ids" for i in shards],
                                   [([tmp_path / f"shard_{i}.{name}" for i in shards], target)
                                    for name, target in zip(NAMES, targets)])
    assert sum(shard["records"] for shard in counts) == 300 and len(shards) > 10
    for name, target in zip(NAMES, targets):
        assert target.read_bytes() == b"".join((tmp_path / f"shard_{i}.{name}").read_bytes() for i in shards)
    assert sorted(p.name for p in (tmp_path / "sample").iterdir()) == sorted(NAMES[:3])


@pytest.mark.unit
def test_whole_sample_checks_fail_with_one_line_and_leave_nothing(tmp_path):
    empty = tmp_path / "empty.fa"
    empty.write_text(">a\n\n>b\n" + "\n" * 3000 + ">c\n")
    counts = prepare_shards(empty, tmp_path / "e", 500)
    with pytest.raises(InputError, match="every record is empty"):
        check_shards(tmp_path / "e", len(counts))
    blank = tmp_path / "blank.fa"
    blank.write_text("\n" * 2000)
    assert one_piece_error(blank, tmp_path) == f"{blank}: holds no FASTA records; check that it is the right file"
    counts = prepare_shards(blank, tmp_path / "b", 500)
    with pytest.raises(InputError) as caught:
        check_shards(tmp_path / "b", len(counts))
    assert str(caught.value) == one_piece_error(blank, tmp_path)
    junk = tmp_path / "junk.fa.gz"
    junk.write_bytes(gzip.compress(b">a\nACGT\n")[:-9])
    with pytest.raises(InputError, match="cannot be read as"):
        plan_shards(junk, tmp_path / "j", 500)
    assert not (tmp_path / "j").exists() and not list(tmp_path.glob(".j*"))


@pytest.mark.unit
def test_a_shard_of_a_file_that_changed_since_the_plan_fails_and_writes_nothing(tmp_path):
    fasta = write_sample(tmp_path / "s.fa", sample_records(50))
    plan_shards(fasta, tmp_path / "shards", 2000)
    prepare_shard(tmp_path / "shards", 1, 300, *(tmp_path / f"one.{name}" for name in NAMES))
    with open(fasta, "a") as handle:
        handle.write(">late\nACGT\n")
    with pytest.raises(InputError) as caught:
        prepare_shard(tmp_path / "shards", 2, 300, *(tmp_path / f"two.{name}" for name in NAMES))
    assert str(caught.value) == f"{fasta}: the file changed while being read; rerun when it is complete"
    assert not list(tmp_path.glob("*two*")) and not list(tmp_path.glob(".*"))


SENSE = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT" if a + b + c not in ("TAA", "TAG", "TGA")]
# runs the commands one after another and prints the largest resident size any of them reached (kB)
PEAK = """import resource, subprocess, sys, json
for command in json.loads(sys.argv[1]):
    subprocess.run([sys.executable, "-m", "virnucflow", *command], check=True, capture_output=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"""


@pytest.mark.process
def test_preparing_a_large_sample_takes_bounded_memory(tmp_path):
    """50,000 coding-like records (15 Mb, ~60,000 kept frames) through the workflow's commands: the largest
    process stays far below what holding the sample would take."""
    import json

    rng = random.Random(1)
    fasta = tmp_path / "big.fa"
    with open(fasta, "w") as out:
        for i in range(50_000):
            out.write(f">read{i}\n{''.join(rng.choices(SENSE, k=100))}\n")
    commands = [["shard", "--shard-mb", "5", str(fasta), str(tmp_path / "shards")]]
    n = shard_count(fasta.stat().st_size, 5_000_000)
    for i in range(1, n + 1):
        commands.append(["prepare-shard", "--size", "300", "--shard", str(i), str(tmp_path / "shards"),
                         *(arg for name in ("chunked", "nucleotide", "protein", "ids", "counts")
                           for arg in (f"--{name}", str(tmp_path / f"{name}{i}")))])
    gather = ["concatenate-shards"]
    for name, option in (("c", "chunked"), ("n", "nucleotide"), ("p", "protein")):
        gather += [f"--{option}", str(tmp_path / f"{name}.all"), f"--{option}-shards",
                   *(str(tmp_path / f"{option}{i}") for i in range(1, n + 1))]
    for name in ("ids", "counts"):
        gather += [f"--{name}-shards", *(str(tmp_path / f"{name}{i}") for i in range(1, n + 1))]
    commands.append(gather)
    # part 3 of 7,500 frames cut from the shards, past the first shard's end (its frames held at once)
    commands.append(["split-part", "--nucleotide-shards", *(str(tmp_path / f"nucleotide{i}") for i in range(1, n + 1)),
                     "--protein-shards", *(str(tmp_path / f"protein{i}") for i in range(1, n + 1)),
                     "--part", "3", "--records-per-file", "7500",
                     "--nucleotide", str(tmp_path / "part.fa"), "--protein", str(tmp_path / "part.faa")])
    proc = subprocess.run([sys.executable, "-c", PEAK, json.dumps(commands)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout) / 1024
    assert n >= 3 and (tmp_path / "p.all").stat().st_size > 5_000_000
    assert (tmp_path / "part.faa").read_text().count(">") == 7_500
    assert peak_mb < 100, f"a preparation step peaked at {peak_mb:.0f} MB"


@pytest.mark.workflow
def test_a_rerun_after_a_stop_mid_preparation_redoes_only_the_unfinished_shards(tmp_path):
    """The state a run killed mid-preparation leaves (the shards cut, two of them prepared; a killed job's
    own outputs are atomic, so absent) is made by a run of those two jobs; the rerun plans only the rest."""
    import yaml

    from workflow_runs import DEMO_DATA, job_counts, snakemake, write_config

    config = yaml.safe_load(write_config(tmp_path).read_text())
    fasta = DEMO_DATA / "phage_mix.fa"
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\nphage_mix\t{fasta}\n")
    n = shard_count(fasta.stat().st_size, round(config["shard_mb"] * 1e6))
    done = [f"results/phage_mix/prepared/shard_{i}.protein.faa" for i in (1, 3)]
    snakemake(tmp_path, "--cores", "2", "--notemp", *done)  # --notemp: the shards stay, as in a killed run
    plan = job_counts(snakemake(tmp_path, "--cores", "2", "-n", "results/phage_mix/chunked.fa").stdout)
    assert n >= 4 and plan == {"prepare_shard": n - 2, "concatenate_shards": 1}, plan

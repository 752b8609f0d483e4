"""Preparation in shards: whatever the shard count, the sample's chunked and kept-frame files and its part files
are byte for byte those of one chunk and one translate job over the whole sample; bad input is one line and
leaves nothing; and preparing a sample takes bounded memory."""

import gzip
import random
import subprocess
import sys

import pytest

from virnucflow import cli
from virnucflow.errors import InputError
from virnucflow.shards import concatenate, prepare_shard, shard_count, shard_name, write_shards
from virnucflow.split import split_parts


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


def prepare_in_shards(fasta, out, shard_bytes, size=300, records_per_file=37):
    """The workflow's steps in-process: shard, prepare each shard, put them together, split."""
    n = write_shards(fasta, out / "shards", shard_bytes)
    names = ("chunked.fa", "nucleotide.fa", "protein.faa")
    for i in range(1, n + 1):
        prepare_shard(out / "shards" / shard_name(i), size, *(out / f"shard_{i}.{name}" for name in names))
    for name, target in zip(names, ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa")):
        concatenate([out / f"shard_{i}.{name}" for i in range(1, n + 1)], out / target)
    split_parts(out / "identified_nucleotide.fa", out / "identified_protein.faa", out / "parts", records_per_file)
    return n


def prepare_in_one_piece(fasta, out, size=300, records_per_file=37):
    """The steps as they were before sharding: chunk and translate the whole sample, then split."""
    out.mkdir()
    assert cli.main(["chunk", "--size", str(size), str(fasta), str(out / "chunked.fa")]) == 0
    assert cli.main(["translate", str(out / "chunked.fa"), "--nucleotide", str(out / "identified_nucleotide.fa"),
                     "--protein", str(out / "identified_protein.faa")]) == 0
    split_parts(out / "identified_nucleotide.fa", out / "identified_protein.faa", out / "parts", records_per_file)


def files(directory):
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and "shard" not in p.name}


@pytest.mark.unit
@pytest.mark.parametrize("name", ["sample.fa", "sample.fa.gz"])
def test_any_shard_count_gives_the_one_piece_files(tmp_path, name):
    fasta = write_sample(tmp_path / name, sample_records(400))
    prepare_in_one_piece(fasta, tmp_path / "whole")
    expected = files(tmp_path / "whole")
    assert len([k for k in expected if k.startswith("parts/")]) > 10
    size = fasta.stat().st_size
    for shard_bytes in (10 * size, size // 7, 4096):
        out = tmp_path / f"sharded_{shard_bytes}"
        n = prepare_in_shards(fasta, out, shard_bytes)
        assert n == shard_count(size, shard_bytes)
        assert files(out) == expected, shard_bytes
        filled = [i for i in range(1, n + 1) if (out / "shards" / shard_name(i)).stat().st_size]
        assert n == 1 or len(filled) >= 3


@pytest.mark.unit
def test_shards_follow_the_records_position_in_the_file(tmp_path):
    records = [(f"s{i:02d}", "ACGT" * 25) for i in range(100)]  # each record takes 5 + 101 = 106 bytes
    fasta = tmp_path / "s.fa"
    fasta.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))
    assert write_shards(fasta, tmp_path / "shards", 1060) == 10
    for i in range(1, 11):  # 10 records per shard, in input order
        ids = [line[1:] for line in (tmp_path / "shards" / shard_name(i)).read_text().splitlines()[::2]]
        assert ids == [f"s{j:02d}" for j in range((i - 1) * 10, i * 10)]
    # the count the workflow planned wins (a file that grew since): the records past it go to the last
    assert write_shards(fasta, tmp_path / "planned", 1060, n=4) == 4
    assert (tmp_path / "planned" / shard_name(4)).read_text().count(">") == 70


@pytest.mark.unit
def test_a_bad_record_fails_the_sample_with_one_line_and_leaves_nothing(tmp_path):
    fasta = tmp_path / "bad.fa"
    fasta.write_text(">ok\n" + "ACGT" * 300 + "\n>broken\nACGT!ACGT\n>later\nACGT\n")
    with pytest.raises(InputError) as caught:
        write_shards(fasta, tmp_path / "shards", 500)
    assert "record 'broken'" in str(caught.value) and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == [fasta]  # no shard directory, no temporary one
    empty = tmp_path / "empty.fa"
    empty.write_text(">a\n\n>b\n")
    with pytest.raises(InputError, match="every record is empty"):
        write_shards(empty, tmp_path / "shards", 500)
    assert not (tmp_path / "shards").exists()


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
        commands.append(["prepare-shard", "--size", "300", str(tmp_path / "shards" / shard_name(i)),
                         "--chunked", str(tmp_path / f"c{i}.fa"), "--nucleotide", str(tmp_path / f"n{i}.fa"),
                         "--protein", str(tmp_path / f"p{i}.fa")])
    gather = ["concatenate-shards"]
    for name, option in (("c", "chunked"), ("n", "nucleotide"), ("p", "protein")):
        gather += [f"--{option}", str(tmp_path / f"{name}.all"), f"--{option}-shards",
                   *(str(tmp_path / f"{name}{i}.fa") for i in range(1, n + 1))]
    commands.append(gather)
    commands.append(["split", "--nucleotide", str(tmp_path / "n.all"), "--protein", str(tmp_path / "p.all"),
                     "--records-per-file", "10000", "--out-dir", str(tmp_path / "parts")])
    proc = subprocess.run([sys.executable, "-c", PEAK, json.dumps(commands)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout) / 1024
    assert n >= 3 and (tmp_path / "p.all").stat().st_size > 5_000_000
    assert peak_mb < 100, f"a preparation step peaked at {peak_mb:.0f} MB"


@pytest.mark.workflow
def test_a_rerun_after_a_stop_mid_preparation_redoes_only_the_unfinished_shards(tmp_path):
    """The state a run killed mid-preparation leaves (the shards cut, two of four prepared; a killed job's
    own outputs are atomic, so absent) is made by a run of those two jobs; the rerun plans only the rest."""
    from workflow_runs import DEMO_DATA, job_counts, snakemake, write_config

    write_config(tmp_path)
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\nphage_mix\t{DEMO_DATA / 'phage_mix.fa'}\n")
    done = [f"results/phage_mix/prepared/shard_{i}.protein.faa" for i in (1, 3)]
    snakemake(tmp_path, "--cores", "2", "--notemp", *done)  # --notemp: the shards stay, as in a killed run
    plan = job_counts(snakemake(tmp_path, "--cores", "2", "-n", "results/phage_mix/chunked.fa").stdout)
    assert plan == {"prepare_shard": 2, "concatenate_shards": 1}, plan

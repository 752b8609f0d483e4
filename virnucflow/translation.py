"""Six-frame translation and the stop-free frame filter of the original `identify_seq`.

The chunk is upper-cased; codons outside the standard 64 (N, IUPAC codes, gaps) translate to
nothing, so the residue disappears; the reverse complement maps only ACGT. A frame is kept when
its protein is non-empty and has no '*' at all. Its nucleotide slice is [k-1, k+3p) of the strand
(3p+1 bases, clipped), and its id is the chunk id plus F1..F3 or R1..R3 with no separator.
"""

_BASES = "TCAG"
_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE = {
    a + b + c: _AMINO[16 * i + 4 * j + k]
    for i, a in enumerate(_BASES)
    for j, b in enumerate(_BASES)
    for k, c in enumerate(_BASES)
}
_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")


def reverse_complement(seq):
    return seq.translate(_COMPLEMENT)[::-1]


def translate_frame(seq, offset):
    return "".join(CODON_TABLE.get(seq[i:i + 3], "") for i in range(offset, len(seq) - 2, 3))


def kept_frames(chunk_id, chunk_seq):
    """Return [(frame_id, nucleotide_slice, protein)] for the frames the original keeps, in F1..R3 order."""
    forward = chunk_seq.upper()
    reverse = reverse_complement(forward)
    kept = []
    for seq, tag in ((forward, "F"), (reverse, "R")):
        for k in (1, 2, 3):
            protein = translate_frame(seq, k - 1)
            if protein and "*" not in protein:
                kept.append((f"{chunk_id}{tag}{k}", seq[k - 1:k + 3 * len(protein)], protein))
    return kept

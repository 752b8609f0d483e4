"""Pickles read statically, nothing unpickled: the globals (classes, functions) and strings they name.

The globals name what a safe loader refused: torch's weights_only unpickler names the first global it
meets but none in a pickle of protocol 4 or later (it stops at the FRAME opcode), and numpy's
`allow_pickle=False` names none. The strings say what kind of model a torch file holds, for the
preflight check. Standard library only.
"""

import pickletools
import zipfile

_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}
_NO_PUSH_OPS = {"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}


def pickle_globals(data):
    """'module.name' of each GLOBAL / STACK_GLOBAL in the pickle bytes `data`, first occurrence order.

    A damaged or truncated pickle gives what was found before the damage.
    """
    found, memo, pushed = [], {}, []
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(pushed) >= 2 and all(isinstance(s, str) for s in pushed[-2:]):
                found.append(f"{pushed[-2]}.{pushed[-1]}")
            if name in _STRING_OPS:
                pushed.append(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif name not in _NO_PUSH_OPS:
                pushed.append(None)
    except Exception:  # noqa: BLE001 - genops raises ValueError, EOFError, ... on damaged input
        pass
    return list(dict.fromkeys(found))


def torch_zip_pickle(path):
    """The main pickle (`data.pkl`) of a torch zip file, or None when `path` is no such file."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            return archive.read(name) if name else None
    except (OSError, zipfile.BadZipFile):
        return None


def pickle_strings(data):
    """Every string constant in the pickle bytes `data` (a damaged pickle: those before the damage)."""
    found = set()
    try:
        for _, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                found.add(arg)
    except Exception:  # noqa: BLE001 - genops raises ValueError, EOFError, ... on damaged input
        pass
    return found

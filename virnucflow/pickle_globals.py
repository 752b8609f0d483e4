"""The globals (classes, functions) that a pickle names, read statically: nothing is unpickled.

Used only to name what a safe loader refused: torch's weights_only unpickler names the first global
it meets but none in a pickle of protocol 4 or later (it stops at the FRAME opcode), and numpy's
`allow_pickle=False` names none. Standard library only.
"""

import pickletools

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

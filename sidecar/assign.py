"""Run-time assignment: send a part to the sidecar of the run that will finish it first.

Each of the run's sidecars is asked once (a ping) for its outstanding work, the pong's `queue.tokens`
(accepted and not yet answered, the batch being computed included), and its recent throughput
(`rate_tokens_per_s`). The part goes to the ready sidecar whose estimate

    (outstanding tokens + the part's tokens) / throughput

is least; a sidecar that has not measured its throughput yet counts with the mean of the others (or all
alike when none has). Ties go to the earlier endpoint file: the workflow lists each part's "home" sidecar
first, so that parts start spread over the sidecars as before. A sidecar that is gone, or that does not
answer a ping within `ping_timeout`, is passed over. When none is ready yet (the models still load), the
first one that answers is taken and the client waits for it. Standard library, pyzmq and numpy only.
"""

from . import protocol, rendezvous, safe_files
from .client import SidecarClient, SidecarDied, SidecarError, SidecarNotOurs


def _ask(endpoint_file, ping_timeout):
    """The pong of the sidecar named by `endpoint_file`, or None if it is gone or does not answer."""
    try:
        info = rendezvous.read(endpoint_file)
    except rendezvous.RendezvousError:
        return None
    except safe_files.UnsafePath as exc:
        raise SidecarNotOurs(str(exc)) from None
    if rendezvous.is_local(info) and not rendezvous.pid_alive(info["pid"], info.get("pid_start")):
        return None
    client = SidecarClient(endpoint_file)
    try:
        return client.ping(timeout=ping_timeout)
    except SidecarNotOurs:
        raise
    except SidecarError:
        return None
    finally:
        client.close()


def estimates(pongs: dict, tokens: int) -> dict:
    """{endpoint file: estimated seconds to finish `tokens` more} of the READY sidecars among `pongs`."""
    ready = {f: p for f, p in pongs.items() if p and p.get("state") == protocol.READY}
    rates = {}
    for f, pong in ready.items():
        rate = pong.get("rate_tokens_per_s")
        rates[f] = float(rate) if isinstance(rate, (int, float)) and rate > 0 else None
    known = [r for r in rates.values() if r]
    fallback = sum(known) / len(known) if known else 1.0
    out = {}
    for f, pong in ready.items():
        queue = pong.get("queue") if isinstance(pong.get("queue"), dict) else {}
        outstanding = queue.get("tokens") if isinstance(queue.get("tokens"), int) else 0
        out[f] = (max(outstanding, 0) + tokens) / (rates[f] or fallback)
    return out


def choose(endpoint_files, tokens: int, ping_timeout: float = 2.0, exclude=()):
    """(endpoint file, {endpoint file: pong or None}): where to send a part of `tokens` tokens.

    Raises SidecarDied (one line) when no sidecar named in `endpoint_files` (less `exclude`) answers."""
    candidates = [str(f) for f in endpoint_files if str(f) not in {str(x) for x in exclude}]
    pongs = {f: _ask(f, ping_timeout) for f in candidates}
    scores = estimates(pongs, tokens)
    if scores:
        return min(scores, key=lambda f: (scores[f], candidates.index(f))), pongs
    for f in candidates:  # nothing ready: the first that answers at all (it is loading its models)
        if pongs[f] and pongs[f].get("state") == protocol.LOADING:
            return f, pongs
    raise SidecarDied(f"no sidecar answers at {', '.join(candidates) or 'any endpoint file'}; "
                      "rerun / use --retries")


def describe_choice(chosen: str, pongs: dict, tokens: int) -> str:
    """One log line: where the part went, and what each sidecar reported."""
    scores = estimates(pongs, tokens)
    parts = []
    for f, pong in pongs.items():
        if not pong:
            parts.append(f"{f}: no answer")
            continue
        queue = pong.get("queue") or {}
        est = f", est {scores[f]:.2f} s" if f in scores else ""
        parts.append(f"{f}: pid {pong.get('pid')} {pong.get('state')}, outstanding {queue.get('tokens', 0)} "
                     f"tokens, rate {pong.get('rate_tokens_per_s')}{est}")
    return f"assigned {tokens} tokens to {chosen} ({'; '.join(parts)})"

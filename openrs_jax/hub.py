"""Before reading from the Hugging Face Hub: fail in seconds when it cannot be reached.

Offline, `datasets.load_dataset` retries for about half a minute and prints a warning per try
before it gives up. One short probe of the Hub's address tells the same at once, so a command
can stop with the way to work offline instead. With HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set,
`datasets` reads its local cache without network: no probe is needed.
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 3.0


def offline_mode() -> str | None:
    """The offline switch that is set (the Hub libraries then use their cache only), else None."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return name
    return None


@functools.lru_cache(maxsize=None)
def unreachable(endpoint: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why `endpoint` cannot be reached (one HEAD request), or None when it answered at all."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return None  # it answered: the network is there
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return f"no answer from {endpoint} within {timeout_s:g} s: {reason}"
    return None


def require_hub(what: str, offline_fix: str) -> None:
    """Raises a ValueError saying how to work offline when `what` would wait on an unreachable Hub.

    Does nothing in offline mode (the cache is read at once) or when the Hub answers.
    """
    if offline_mode():
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    reason = unreachable(endpoint)
    if reason:
        raise ValueError(
            f"{what} would be downloaded from the Hugging Face Hub, which cannot be reached ({reason}); "
            f"offline, {offline_fix}, or set HF_HUB_OFFLINE=1 to use what the local Hub cache holds"
        )

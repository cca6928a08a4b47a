"""W&B for a ``cmkd`` run: online only when it can work, never a hang.

Without ``WANDB_MODE`` the run logs online when wandb has credentials for its server and the server accepts a TCP
connection within ``$CMKD_WANDB_TIMEOUT`` seconds (default 5), else offline (upload later with ``wandb sync``). With
``WANDB_MODE=online`` set explicitly, the same two checks stop the run before training with
:class:`~cmkd_lightning.errors.WandbSetupError` (wandb itself would wait about two minutes and then fail).

Unless ``WANDB_QUIET`` is set, a ``cmkd`` run sets it to ``true``: wandb then prints the run's name, folder and
page but not its version banner nor, at the end, its history and summary panels (the run summary of
:class:`~cmkd_lightning.callbacks.RunSummary` has the numbers, the folder and the ``wandb sync`` command).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from cmkd_lightning.errors import WandbSetupError
from cmkd_lightning.utilities.optional import available, require

__all__ = ["WANDB_PROBE_TIMEOUT_ENV", "ensure_wandb_mode"]


def _wandb_credentials_host() -> tuple[bool, str]:
    """Ask wandb whether it has credentials for its configured server, and which server that is.

    wandb looks in WANDB_API_KEY, its settings files and ~/.netrc for the host of ``WANDB_BASE_URL`` (or its
    default); nothing is sent over the network, no prompt is shown, nothing is written.
    """
    wandb = require("wandb", extra="wandb", purpose="W&B logging (WandbLogger)")

    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        settings = wandb_setup.singleton().settings
        host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
        auth = wbauth.authenticate_session(host=host, source="cmkd", prompt=False, verify=False, update_session=False)
        return auth is not None, str(settings.base_url)
    except (ImportError, AttributeError, TypeError):  # another wandb version: its public login, without a prompt
        host = os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url
        try:
            return bool(wandb.login(prompt=False, verify=False)), host
        except Exception:
            return False, host
    except Exception:  # wandb refuses the configuration (e.g. a malformed key): no usable credentials
        return False, os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url


def _wandb_unreachable(host: str, timeout: float) -> str | None:
    """Why a TCP connection to the W&B server ``host`` (a URL) failed within ``timeout`` seconds, or None."""
    url = urlsplit(host if "://" in host else f"https://{host}")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None


WANDB_PROBE_TIMEOUT_ENV = "CMKD_WANDB_TIMEOUT"


def _set_offline() -> str:
    """WANDB_MODE=offline, for this process and the ranks it launches.

    The credentials lookup started wandb's process settings from the environment as it was; with no run open they
    are torn down (``wandb.teardown``), so the run's ``wandb.init`` reads the environment afresh (otherwise wandb
    warns "Changes to your `wandb` environment variables will be ignored"); with a run open (several runs in one
    process) the setting is changed in place.
    """
    os.environ["WANDB_MODE"] = "offline"
    try:
        import wandb

        if wandb.run is None:
            wandb.teardown()
        else:
            from wandb.sdk import wandb_setup

            wandb_setup.singleton().settings.mode = "offline"
    except Exception:  # another wandb version: the environment variable is what it reads
        pass
    return "offline"


def ensure_wandb_mode(uses_wandb: bool = True) -> str:
    """Choose the W&B mode when none was set (``WANDB_MODE``), say why, and return it; check a forced ``online``.

    Offline when wandb reports no credentials, or when the W&B server does not accept a TCP connection within
    ``$CMKD_WANDB_TIMEOUT`` seconds (default 5): without this, ``wandb.init`` waits about 100 s and then fails the run.

    Args:
        uses_wandb: whether the run logs to W&B; a forced ``WANDB_MODE=online`` is checked only then.

    Raises:
        WandbSetupError: ``WANDB_MODE=online`` (set by the user) with no credentials or no reachable server.
    """
    mode = os.environ.get("WANDB_MODE")
    if not available("wandb"):  # no wandb: no W&B run to configure
        return mode or "disabled"
    if uses_wandb:  # before wandb reads its settings from the environment (see the module docstring)
        os.environ.setdefault("WANDB_QUIET", "true")
    if mode is not None:
        if mode == "online" and uses_wandb:
            _check_online()
        return mode
    has_credentials, host = _wandb_credentials_host()
    if not has_credentials:
        mode = _set_offline()
        rank_zero_info(
            f"W&B: no API key found (wandb has no credentials for {host}: WANDB_API_KEY, its settings or ~/.netrc), "
            "so runs are logged offline under the logger's save_dir; upload them later with `wandb sync <run dir>`. "
            "Set WANDB_MODE=online to change this."
        )
        return mode
    timeout = float(os.environ.get(WANDB_PROBE_TIMEOUT_ENV, "5"))
    reason = _wandb_unreachable(host, timeout)
    if reason is not None:
        mode = _set_offline()
        rank_zero_warn(
            f"W&B: an API key is configured but the server {host} cannot be reached within {timeout:g} s ({reason}), "
            "so this run is logged offline under the logger's save_dir; upload it later with `wandb sync <run dir>`."
        )
        return mode
    return "online"


def _check_online() -> None:
    """Fail fast, with the fix, when ``WANDB_MODE=online`` cannot work (no key, or no reachable server)."""
    has_credentials, host = _wandb_credentials_host()
    if not has_credentials:
        raise WandbSetupError(
            f"Expected W&B credentials for {host} because WANDB_MODE=online, but wandb finds none (WANDB_API_KEY, "
            "`wandb login`, ~/.netrc). Set WANDB_API_KEY, or unset WANDB_MODE to log offline and `wandb sync` later."
        )
    timeout = float(os.environ.get(WANDB_PROBE_TIMEOUT_ENV, "5"))
    reason = _wandb_unreachable(host, timeout)
    if reason is not None:
        raise WandbSetupError(
            f"Expected the W&B server {host} to be reachable because WANDB_MODE=online, but it did not answer within "
            f"{timeout:g} s ({reason}). Check the network, or unset WANDB_MODE (or set WANDB_MODE=offline) to log "
            "offline and `wandb sync` later."
        )

"""Fetching a repo's files from the Hugging Face Hub into the local Hugging Face cache.

Online (the default, as in MAX and vLLM): the revision is resolved on the Hub, a first small
download brings the metadata (config, tokenizer, chat template, safetensors index), a
chooser picks the files to load from the repo's file list (see `hub_files`), and a second
download brings them, with huggingface_hub's progress bars. Files already in the cache are not
fetched again, and with the Hub unreachable a complete cached copy serves. With
`HF_HUB_OFFLINE=1` only the cache is read.

Settings are read from the environment at each call, with huggingface_hub's meanings:
`HF_ENDPOINT`, `HF_TOKEN` (or the token `hf auth login` stored), `HF_HOME` / `HF_HUB_CACHE`,
`HF_HUB_OFFLINE`. Every failure becomes a `MaxError` saying what to do.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from max.errors import MaxError
from max.pipelines.lib.hub.hub_files import METADATA_PATTERNS, RepoFiles

logger = logging.getLogger("max.pipelines.hub")

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_PAGE = "https://huggingface.co/settings/tokens"

# Picks the files to fetch from a repo's file list and the folder holding its metadata.
Chooser = Callable[[list[str], Path], RepoFiles]


def _is_true(value: str | None) -> bool:
    # huggingface_hub's reading of boolean environment variables.
    return value is not None and value.upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSettings:
    """Where the Hub and the cache are, and whether the Hub may be asked at all."""

    endpoint: str
    cache_dir: Path
    offline: bool

    @classmethod
    def from_environment(cls) -> HubSettings:
        """The settings the environment gives now (huggingface_hub reads them only once,
        when it is imported; reading them here keeps a changed environment in force)."""
        env = os.environ
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
        return cls(
            endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            cache_dir=Path(os.path.expandvars(cache)).expanduser(),
            offline=_is_true(env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE")),
        )


@dataclass
class HubSnapshot:
    """A repo's files at one commit, in the cache. `files` is None when the cache holds no
    file list of that commit (filled by other tools): the caller then picks from the folder."""

    directory: Path
    commit: str
    files: RepoFiles | None


class HubUnavailableError(MaxError):
    """The repo is not (completely) in the cache and the Hub cannot be asked: offline mode,
    or the Hub is unreachable. Callers may fall back to an embedded copy; `reason` says
    why the Hub was not asked, in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def fetch_snapshot(repo_id: str, revision: str | None, choose: Chooser, what: str = "model") -> HubSnapshot:
    """Brings the files `choose` picks from `repo_id` at `revision` (None: the default
    branch) into the cache and returns their folder. `what` names the flag in messages."""
    settings = HubSettings.from_environment()
    with _hub_errors(repo_id, revision, settings, what):
        if settings.offline:
            return _from_cache(repo_id, revision, choose, settings, what)
        return _download(repo_id, revision, choose, settings)


def _download(repo_id: str, revision: str | None, choose: Chooser, settings: HubSettings) -> HubSnapshot:
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(endpoint=settings.endpoint)
    # Resolved once, so that every file comes from the same commit (a cached ref serves
    # when the Hub is unreachable).
    rev = api.resolve_revision(repo_id, revision=revision, cache_dir=settings.cache_dir)
    common = {
        "repo_id": repo_id,
        "revision": rev,
        "cache_dir": str(settings.cache_dir),
        "endpoint": settings.endpoint,
    }
    # Small files, and on later runs nothing at all: no progress bar for them.
    folder = Path(snapshot_download(**common, allow_patterns=METADATA_PATTERNS, tqdm_class=_quiet_progress()))
    sizes = _cached_file_sizes(repo_id, rev.resolved, settings)
    if sizes is None:
        return HubSnapshot(folder, rev.resolved, None)
    chosen = choose(sorted(sizes), folder)
    missing = [f for f in chosen.download if not (folder / f).exists()]
    if missing:
        logger.info(
            "Downloading %s (commit %s) from %s: %d file(s), %s, into %s",
            repo_id,
            rev.resolved[:12],
            settings.endpoint,
            len(missing),
            _human_size(sum(sizes[f] for f in missing)),
            settings.cache_dir,
        )
        start = time.monotonic()
        folder = Path(snapshot_download(**common, allow_patterns=chosen.download))
        logger.info("Downloaded %s in %.1f s", repo_id, time.monotonic() - start)
    return HubSnapshot(folder, rev.resolved, chosen)


def _from_cache(repo_id: str, revision: str | None, choose: Chooser, settings: HubSettings, what: str) -> HubSnapshot:
    from huggingface_hub import HfApi
    from huggingface_hub.file_download import repo_folder_name

    rev = HfApi(endpoint=settings.endpoint).resolve_revision(
        repo_id, revision=revision, cache_dir=settings.cache_dir, local_files_only=True
    )
    folder = settings.cache_dir / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / rev.resolved
    if not folder.is_dir():
        raise _unavailable(repo_id, revision, settings, what, None)
    sizes = _cached_file_sizes(repo_id, rev.resolved, settings)
    if sizes is None:
        return HubSnapshot(folder, rev.resolved, None)
    chosen = choose(sorted(sizes), folder)
    missing = [f for f in chosen.required() if not (folder / f).exists()]
    if missing:
        raise HubUnavailableError(
            f"the cached copy of {repo_id} (commit {rev.resolved[:12]}, in {settings.cache_dir}) is "
            f"incomplete: {', '.join(missing[:3])} missing (never downloaded, or the download was "
            "interrupted); HF_HUB_OFFLINE=1 is set, so nothing is downloaded: run once without it "
            "to fetch the rest",
            "its cached copy is incomplete and HF_HUB_OFFLINE=1 is set",
        )
    return HubSnapshot(folder, rev.resolved, chosen)


def _cached_file_sizes(repo_id: str, commit: str, settings: HubSettings) -> dict[str, int] | None:
    """Path -> size of every file of the repo at `commit`, from the listing the cache keeps
    (None when it keeps none)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        tree = get_cached_repo_tree(repo_id, revision=commit, cache_dir=settings.cache_dir)
    except CachedRepoTreeNotFoundError:
        return None
    return {f.path: int(f.size or 0) for f in tree}


def _quiet_progress() -> type:
    """A progress bar class that shows nothing (for huggingface_hub's `tqdm_class`)."""
    from tqdm.auto import tqdm

    class QuietProgress(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.pop("name", None)
            super().__init__(*args, **{**kwargs, "disable": True})

    return QuietProgress


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def _has_token() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())


def _unavailable(
    repo_id: str, revision: str | None, settings: HubSettings, what: str, cause: BaseException | None
) -> HubUnavailableError:
    at = f" at revision {revision}" if revision else ""
    head = f"{what} {repo_id!r}{at} is not a local folder and is not in the Hugging Face cache ({settings.cache_dir})"
    if settings.offline:
        return HubUnavailableError(
            f"{head}; HF_HUB_OFFLINE=1 is set, so nothing is downloaded: unset it to download "
            "from the Hub, or put the files in a folder and pass its path",
            "HF_HUB_OFFLINE=1 is set",
        )
    cause_text = f"{type(cause).__name__}: {cause}".splitlines()[0] if cause is not None else "no answer"
    reason = f"the Hub at {settings.endpoint} cannot be reached ({cause_text})"
    return HubUnavailableError(
        f"{head}, and {reason}: check the network (and HF_ENDPOINT), or put the files in a "
        "folder and pass its path",
        reason,
    )


@contextmanager
def _hub_errors(repo_id: str, revision: str | None, settings: HubSettings, what: str) -> Iterator[None]:
    """Turns huggingface_hub's and the HTTP client's errors into MaxErrors that say what to do."""
    import httpx2
    from huggingface_hub import errors

    page = f"{settings.endpoint}/{repo_id}"
    try:
        yield
    except MaxError:
        raise
    except errors.HFValidationError as e:
        raise MaxError(f"{what} {repo_id!r} is neither a local path nor a valid Hugging Face repo id ({e})") from None
    except errors.GatedRepoError:
        hint = (
            "the token in use (HF_TOKEN or the stored login) has not been granted access yet"
            if _has_token()
            else f"then set HF_TOKEN to a token of that account ({TOKEN_PAGE})"
        )
        raise MaxError(f"{repo_id} is a gated repo: request access on {page} while logged in; {hint}") from None
    except errors.RepositoryNotFoundError:
        raise MaxError(
            f"{what} {repo_id} was not found on the Hub ({settings.endpoint}): check the spelling "
            f"(ORG/NAME, as in the repo's address); a private repo needs HF_TOKEN set to a token that can read it ({TOKEN_PAGE})"
        ) from None
    except errors.RevisionNotFoundError:
        raise MaxError(f"--revision {revision}: {repo_id} has no such branch, tag or commit (see {page}/tree/main)") from None
    except errors.RemoteEntryNotFoundError as e:
        raise MaxError(f"{repo_id}: a file is missing on the Hub ({str(e).splitlines()[-1]})") from None
    except (errors.RevisionResolutionError, errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        # The Hub could not be asked and the cache cannot answer.
        raise _unavailable(repo_id, revision, settings, what, e.__cause__ or e) from None
    except errors.HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise MaxError(
                f"the Hub at {settings.endpoint} rejected the token (401 Unauthorized): check HF_TOKEN "
                f"(or the stored login), or unset it for a public repo ({TOKEN_PAGE})"
            ) from None
        if status == 403:
            raise MaxError(
                f"the Hub at {settings.endpoint} refused access to {repo_id} (403 Forbidden): the token "
                f"needs read access to this repo ({TOKEN_PAGE})"
            ) from None
        raise _failed(repo_id, settings, f"HTTP {status}: {str(e).splitlines()[0]}") from None
    except (httpx2.HTTPError, OSError) as e:
        raise _failed(repo_id, settings, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _failed(repo_id: str, settings: HubSettings, reason: str) -> MaxError:
    return MaxError(
        f"downloading {repo_id} from {settings.endpoint} failed ({reason}); the files downloaded so "
        f"far stay in the cache ({settings.cache_dir}) and the next run continues from there"
    )

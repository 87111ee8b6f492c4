"""Where the job's shared secret comes from: an explicit value, a file, or the environment.

A token on a command line shows in ``ps`` to every user of the machine; a file
(``--token-file``, ``--rdzv-conf token_file=...``) or an environment variable
does not. :func:`resolve_token` looks, in order, at

1. the explicit value (``--token``, ``token=``),
2. the file named explicitly,
3. ``TORCHRT_TOKEN`` (:attr:`torchrt.contract.Env.TOKEN`),
4. the file named by ``TORCHRT_TOKEN_FILE`` (:attr:`torchrt.contract.Env.TOKEN_FILE`),

and returns None when none is set (an empty variable counts as unset). A
token file holds the token as UTF-8 text; its trailing newline (what ``echo``
and editors add) is not part of the token. A file that cannot be read, is not
UTF-8 or holds nothing raises :class:`~torchrt.errors.TokenFileError` naming
the file: a job must not quietly run without the token its user meant to give.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchrt.contract import Env
from torchrt.errors import TokenFileError

__all__ = ["read_token_file", "resolve_token"]


def resolve_token(token: str | None, token_file: str | None) -> str | None:
    """The job's token: ``token``, else ``token_file``'s, else the environment's (see the module)."""
    if token is not None:
        return token
    if token_file is not None:
        return read_token_file(token_file)
    from_env = os.environ.get(Env.TOKEN)
    if from_env:
        return from_env
    env_file = os.environ.get(Env.TOKEN_FILE)
    if env_file:
        return read_token_file(env_file, source=Env.TOKEN_FILE)
    return None


def read_token_file(path: str | os.PathLike[str], source: str = "token file") -> str:
    """The token held in ``path`` without its trailing newline; ``source`` names who named the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TokenFileError(f"{source} {os.fspath(path)}: cannot be read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenFileError(f"{source} {os.fspath(path)}: expected UTF-8 text ({e.reason} at byte "
                             f"{e.start})") from None
    token = text.removesuffix("\n").removesuffix("\r")
    if not token:
        raise TokenFileError(f"{source} {os.fspath(path)}: holds no token (it is empty or one newline)")
    return token

"""Limits on what one request may ask, and AUTOMATIC1111-style HTTP Basic access control."""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from ..errors import UserInputError


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 1024 * 1024  # width x height of one image
    max_steps: int = 150
    max_images: int = 8  # batch_size x n_iter of one request
    max_body_bytes: int = 20 * 1024 * 1024  # the request body, base64 images included
    max_prompt_chars: int = 4000

    def check_body(self, nbytes: int) -> None:
        if nbytes > self.max_body_bytes:
            raise UserInputError(f"the request body is {nbytes} bytes; this server accepts at most "
                                 f"{self.max_body_bytes} (--max-body-bytes)")

    def check(self, width: int, height: int, steps: int, images: int, prompts: list[str]) -> None:
        """Each violation says the limit (a 422)."""
        if width * height > self.max_pixels:
            raise UserInputError(f"{width}x{height} is {width * height} pixels; this server allows at most "
                                 f"{self.max_pixels} per image (--max-pixels)")
        if steps > self.max_steps:
            raise UserInputError(f"steps {steps} is over this server's limit of {self.max_steps} (--max-steps)")
        if images > self.max_images:
            raise UserInputError(f"batch_size x n_iter = {images} images is over this server's limit of "
                                 f"{self.max_images} per request (--max-images)")
        longest = max((len(p) for p in prompts), default=0)
        if longest > self.max_prompt_chars:
            raise UserInputError(f"a prompt of {longest} characters is over this server's limit of "
                                 f"{self.max_prompt_chars} (--max-prompt-chars)")


def parse_credentials(text: str | None) -> dict[str, str]:
    """``"user:password,user2:password2"`` (A1111's --api-auth) -> {user: password}."""
    if not text:
        return {}
    pairs = {}
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise UserInputError(f"--api-auth takes user:password[,user2:password2], got {item.strip()!r}")
        pairs[user] = password
    return pairs


def authorized(header: str | None, credentials: dict[str, str]) -> bool:
    """Does an ``Authorization: Basic …`` header name one of the credentials? Compared in constant time."""
    if not credentials:
        return True
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    ok = False
    for name, secret in credentials.items():  # every pair compared: the time does not tell which user exists
        ok |= secrets.compare_digest(user.encode(), name.encode()) & secrets.compare_digest(password.encode(),
                                                                                              secret.encode())
    return ok

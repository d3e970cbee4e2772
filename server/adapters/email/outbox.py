"""Development delivery: print the email and keep a copy in the outbox folder."""

from __future__ import annotations

import asyncio
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

from server.adapters.email.base import OutgoingEmail


class OutboxMailer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def send(self, email: OutgoingEmail) -> None:
        message = EmailMessage()
        message["From"] = "Lustify <no-reply@lustify.local>"
        message["To"] = email.to
        message["Subject"] = email.subject
        message.set_content(email.text)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.eml"
        await asyncio.to_thread(self._write, name, message.as_bytes())
        print(f"\n--- email to {email.to}: {email.subject}\n{email.text}\n--- saved as {self.folder / name}\n",
              flush=True)

    def _write(self, name: str, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / name).write_bytes(data)

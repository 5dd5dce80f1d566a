"""`synfiqa convert ...`: bring model checkpoints of the original code into the formats
synfiqa loads. The group is empty here: each converter belongs to the plugin whose model it
converts, and is added by that plugin's `register_commands` hook (the ddpm generator adds
`guided-diffusion`, the blip-itc model `blip`), as a third-party plugin adds its own."""
from __future__ import annotations

import click


@click.group()
def convert():
    """Convert original checkpoints to the formats synfiqa loads."""


COMMANDS = [convert]

"""The one exception type of the data path: a user mistake or unusable data, explained in one sentence."""

from __future__ import annotations


class DataError(ValueError):
    """A bad argument, missing shard, unusable folder or too many broken images.

    The message is one sentence that names the argument or file, its value and what is allowed; command-line
    entry points print it without a traceback.
    """


def clean_worker_message(message: str) -> str:
    """Recover our one-sentence message from the text torch builds around an exception raised in a worker.

    Args:
        message: ``str(exception)`` as re-raised by the DataLoader in the main process ("Caught DataError in
            DataLoader worker process 0. Original Traceback ... DataError: <message>").
    """
    marker = "DataError: "
    lines = [line for line in message.strip().splitlines() if marker in line]
    if not lines:
        return message
    return lines[-1].split(marker, 1)[1]

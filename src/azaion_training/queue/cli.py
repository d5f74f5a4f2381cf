"""`azaion queue ...`: consume, replay, dump, publish-sample."""

from pathlib import Path

import typer

from azaion_training.cli_support import console, print_json, settings

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`
queue_app = typer.Typer(no_args_is_help=True, help="Annotation ingestion from the RabbitMQ stream.")
commands.add_typer(queue_app, name="queue")

FROM_HELP = "first | last | next | offset:N (default: resume after the committed offset, else first)."


@queue_app.command("consume")
def consume_command(
    start: str = typer.Option("", "--from", help=FROM_HELP),
    exit_when_idle: float | None = typer.Option(None, "--exit-when-idle", min=0,
                                                help="Exit 0 once nothing was delivered, queued or in hand "
                                                "for this many seconds."),
    create_stream: bool = typer.Option(False, "--create-stream", help="Create the stream when it does not exist."),
) -> None:
    """Mirror the annotation stream onto the data tree until SIGTERM/SIGINT."""
    from azaion_training.queue.consumer import consume, parse_start

    result = consume(settings(), parse_start(start), exit_when_idle, create_stream)
    print_json({"stopped_by": result.stopped_by, "committed_offset": result.committed_offset,
                **result.counts.as_dict()})


@queue_app.command("replay")
def replay_command(file: Path = typer.Argument(..., help="A dump file (from `azaion queue dump`).")) -> None:
    """Apply a dump file through the consumer's handler (no broker needed)."""
    from dataclasses import asdict

    from azaion_training.queue.replay import replay_dump

    print_json(asdict(replay_dump(settings(), file)))


@queue_app.command("dump")
def dump_command(
    out: Path = typer.Option(..., "--out", help="The dump file to write."),
    start: str = typer.Option("first", "--from", help="first | last | next | offset:N."),
    idle: float = typer.Option(2.0, "--idle", min=0.1, help="Stop after this many seconds without a new message."),
    count: int | None = typer.Option(None, "--count", min=1, help="Stop after this many messages."),
) -> None:
    """Write the stream's messages to a dump file (offsets stored nowhere)."""
    from dataclasses import asdict

    from azaion_training.queue.consumer import parse_start
    from azaion_training.queue.streamio import dump_stream

    print_json(asdict(dump_stream(settings().rabbitmq, out, parse_start(start), idle, count)))


@queue_app.command("publish-sample")
def publish_sample_command(
    count: int = typer.Option(10, "--count", min=1, help="How many Created annotations."),
    size: int = typer.Option(640, "--size", min=32, help="Image size in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed (also part of the annotation names)."),
) -> None:
    """Publish Azaion-format sample messages (synthetic scenes; one Validated for the operator ones)."""
    import numpy as np

    from azaion_training.classes import WeatherMode
    from azaion_training.queue.messages import NormalizedDetection
    from azaion_training.queue.streamio import publish, sample_messages, to_amqp
    from azaion_training.scenes import encode_jpeg, render_scene  # cv2: a development command only

    rng, modes = np.random.default_rng(seed), list(WeatherMode)

    def scene(i: int) -> tuple[bytes, list[NormalizedDetection]]:
        rendered = render_scene(rng, size, modes[i % len(modes)])
        return encode_jpeg(rendered.image), [NormalizedDetection(*label) for label in rendered.labels]

    messages = sample_messages(count, scene, seed)
    sent = publish(settings().rabbitmq, [to_amqp(message) for message in messages])
    console.print(f"published {sent} messages to {settings().rabbitmq.queue_name!r}")

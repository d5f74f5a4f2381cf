"""`azaion backup create|verify|restore|list|prune`: argument parsing and printing only (ops/backup.py)."""

from pathlib import Path

import typer

from azaion_training.cli_support import console, print_json, settings
from azaion_training.errors import OperationFailed

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`
backup_app = typer.Typer(no_args_is_help=True, help="Snapshots of the state that cannot be recreated: "
                         "create, verify, restore (docs/backup.md).")
commands.add_typer(backup_app, name="backup")

AT_HELP = "A directory or s3://bucket/prefix (default BACKUP_DESTINATION, else <root>/backups)."
SNAPSHOT_HELP = "A snapshot directory, a name from `azaion backup list`, or s3://bucket/prefix/NAME."


def say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


@backup_app.command("create")
def create_command(
    to: str | None = typer.Option(None, "--to", help=AT_HELP),
    with_weights: bool = typer.Option(False, "--with-weights", help="Also the runs' weights/*.pt and ONNX files."),
    with_data: bool = typer.Option(False, "--with-data", help="Also the annotation areas (images and labels) and "
                                   "queue-rejected/: the stream keeps them only as long as its retention."),
    keep: int | None = typer.Option(None, "--keep", min=0, help="Then keep the newest N snapshots there "
                                    "(default BACKUP_KEEP, 14; 0 keeps all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Write a consistent snapshot of the state (safe while the consumer runs)."""
    from azaion_training.ops.backup import create_snapshot

    result = create_snapshot(settings(), to, with_weights=with_weights, with_data=with_data, keep=keep)
    if as_json:
        print_json(result.as_dict())
        return
    offset = f", stream offset {result.offset}" if result.offset is not None else ""
    say(f"snapshot {result.name}: {result.files} files, {_size(result.bytes)}{offset} -> "
        f"{result.location} ({result.seconds:.1f} s)")
    if result.pruned:
        say(f"pruned {len(result.pruned)} older snapshot(s): {', '.join(result.pruned)}")


@backup_app.command("verify")
def verify_command(snapshot: str = typer.Argument(..., help=SNAPSHOT_HELP),
                   as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Re-hash every file against snapshot.json and integrity-check each SQLite file; exit 1 when damaged."""
    from azaion_training.ops.backup import damage_message, verify_snapshot

    result = verify_snapshot(settings(), snapshot)
    if as_json:
        print_json(result.as_dict())
        if not result.ok:
            raise typer.Exit(1)
        return
    if not result.ok:
        raise OperationFailed(damage_message(result))
    say(f"snapshot {result.snapshot}: {result.files} files, {_size(result.bytes)}, all intact")


@backup_app.command("restore")
def restore_command(
    snapshot: str = typer.Argument(..., help=SNAPSHOT_HELP),
    root: Path | None = typer.Option(None, "--root", help="The data root to restore into (default AZAION_ROOT_DIR); "
                                     "it must hold no live state and run no consumer, training or promotion."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Verify a snapshot, then restore it into an empty or stopped data root."""
    from azaion_training.ops.backup import restore_snapshot

    result = restore_snapshot(settings(), snapshot, root)
    if as_json:
        print_json(result.as_dict())
        return
    say(f"restored {result.files} file(s) ({result.unchanged} already in place) from {result.snapshot} "
        f"into {result.root}")
    if result.offset is not None:
        say(f"the consumer resumes after offset {result.offset} of stream {result.stream!r} (not the "
            "broker's stored offset) and replays what came after it")
    for warning in result.warnings:
        say(f"warning: {warning}")


@backup_app.command("list")
def list_command(at: str | None = typer.Option(None, "--at", "--to", help=AT_HELP),
                 as_json: bool = typer.Option(False, "--json", help="Print the snapshots as JSON.")) -> None:
    """The complete snapshots, oldest first."""
    from dataclasses import asdict

    from rich.table import Table

    from azaion_training.ops.backup import list_snapshots, parse_destination

    snapshots = list_snapshots(settings(), at)
    if as_json:
        print_json([asdict(s) for s in snapshots])
        return
    if not snapshots:
        say(f"no snapshot at {parse_destination(settings(), at)}")
        return
    table = Table("snapshot", "created", "host", "files", "size", "offset", "contents")
    for s in snapshots:
        contents = ", ".join(["state", *(["weights"] if s.with_weights else []), *(["data"] if s.with_data else [])])
        table.add_row(s.name, s.created, s.host, str(s.files), _size(s.bytes),
                      "-" if s.offset is None else str(s.offset), contents)
    console.print(table)


@backup_app.command("prune")
def prune_command(keep: int = typer.Option(..., "--keep", min=1, help="Keep the newest N snapshots."),
                  at: str | None = typer.Option(None, "--at", "--to", help=AT_HELP)) -> None:
    """Delete all but the newest N snapshots."""
    from azaion_training.ops.backup import prune_snapshots

    removed = prune_snapshots(settings(), keep, at)
    say(f"removed {len(removed)} snapshot(s)" + (f": {', '.join(removed)}" if removed else ""))

"""`azaion weights pull NAME`: base weights into models/base/ (training/weights.py)."""

import typer

from azaion_training.cli_support import console, print_json, settings

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`
weights_app = typer.Typer(no_args_is_help=True, help="Base weights for training (models/base/).")
commands.add_typer(weights_app, name="weights")


@weights_app.command("pull")
def pull_command(name: str = typer.Argument(..., help="Weights file name, e.g. yolo26m.pt."),
                 sha256: str | None = typer.Option(None, "--sha256", metavar="HEX",
                                                   help="The file's SHA-256 (from a source you trust)."),
                 trust_on_first_use: bool = typer.Option(
                     False, "--trust-on-first-use",
                     help="Store NAME although no hash is known for it, and record the hash it has."),
                 as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")) -> None:
    """Download NAME from WEIGHTS_BASE_URL into models/base/NAME (once). It is stored only if its
    sha256 matches the known one (--sha256, the shipped weights.lock, or the hash recorded by an
    earlier pull; with none known only with --trust-on-first-use) and it loads weights-only as an
    Ultralytics checkpoint. A bare TRAINING_MODEL such as yolo26m.pt then resolves there."""
    from azaion_training.training.weights import pull

    result = pull(settings(), name, sha256=sha256, trust_on_first_use=trust_on_first_use)
    if as_json:
        print_json(result.to_dict())
    elif result.downloaded:
        console.print(f"pulled {name} from {result.source}: {result.path} ({result.size / 1e6:.1f} MB, "
                      f"sha256 {result.sha256}, checked against: {result.trust})", highlight=False, soft_wrap=True)
    else:
        console.print(f"{name} is already present: {result.path} (nothing downloaded; sha256 {result.sha256}, "
                      f"checked against: {result.trust})", highlight=False, soft_wrap=True)

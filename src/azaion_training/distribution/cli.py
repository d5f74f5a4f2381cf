"""`azaion publish` and `azaion fetch-model`."""

from pathlib import Path

import typer

from azaion_training.cli_support import console, print_json, settings

commands = typer.Typer()  # cli.py merges every stage's `commands` into `azaion`

TARGET_HELP = "'azaion' (Azaion API + S3 CDN) or 'local:DIR' (parts under DIR/api and DIR/cdn, no servers)."
NO_MANIFEST_HELP = ("For models published by other tooling (no manifest): decrypt anyway; only the padding and, "
                    "for .onnx, the ONNX structure are checked.")
ALLOW_DOWNGRADE_HELP = ("Accept a manifest older than the newest version fetched from this target before "
                        "(refused otherwise: a replayed or put-back manifest).")


@commands.command("publish")
def publish(file: Path = typer.Option(..., "--file", help="Model file, e.g. a run's export/azaion-1280-*.onnx "
                                                         "(runs are published through the gate: "
                                                         "`azaion models promote`)."),
            name: str | None = typer.Option(None, "--name", help="Resource name (default: the file name)."),
            folder: str = typer.Option("models", "--folder", help="API folder / CDN key prefix."),
            target: str = typer.Option("azaion", "--target", help=TARGET_HELP),
            source_run: str | None = typer.Option(None, "--source-run", help="Training run for the manifest."),
            as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")) -> None:
    """Encrypt a model with MODEL_ENCRYPTION_KEY, split it, big part to the CDN, small part to the API."""
    from azaion_training.distribution.publish import publish_model

    result = publish_model(settings(), file, name=name, folder=folder, target=target,
                           source_run=source_run)
    if as_json:
        print_json(result.manifest)
        return
    manifest = result.manifest
    console.print(f"published {result.folder}/{result.name} version {result.version} to {result.target}: "
                  f"{manifest['plaintext']['size']} bytes, small part {manifest['small']['size']} B, "
                  f"big part {manifest['big']['size']} B, sha256 {manifest['plaintext']['sha256']}",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"manifest: {result.manifest_path}", markup=False, highlight=False, soft_wrap=True)


@commands.command("fetch-model")
def fetch_model(name: str = typer.Argument(..., help="Published model name, e.g. azaion.onnx."),
                out: Path | None = typer.Option(None, "--out", help="Where to write it (default ./NAME)."),
                folder: str = typer.Option("models", "--folder", help="API folder / CDN key prefix."),
                target: str = typer.Option("azaion", "--target", help=TARGET_HELP),
                no_manifest: bool = typer.Option(False, "--no-manifest", help=NO_MANIFEST_HELP),
                allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help=ALLOW_DOWNGRADE_HELP)) -> None:
    """Read the manifest, download the parts it names, reassemble, decrypt and verify; write with mode 0600."""
    from azaion_training.distribution.fetch import fetch_model_to_file

    result = fetch_model_to_file(settings(), name, out=out, target=target, folder=folder, no_manifest=no_manifest,
                                 allow_downgrade=allow_downgrade)
    check = "verified" if result.verified else "NOT verified against a manifest"
    version = f" version {result.version}" if result.version is not None else ""
    console.print(f"fetched {folder}/{result.name}{version} to {result.path}: {result.size} bytes, "
                  f"sha256 {result.sha256} {check}", markup=False, highlight=False, soft_wrap=True)

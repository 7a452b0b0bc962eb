"""``hookfleet spool``: the answered calls' records a receiver left on this host's disk."""

from __future__ import annotations

import click

from workers.cli.params import invocation_settings


@click.command()
@click.option(
    "--to-database",
    is_flag=True,
    help="Write the records of receivers gone from this host to the database as received "
    "rows (the stuck-work sweep queues them) and delete their files.",
)
def spool(to_database: bool) -> None:
    """Answered calls' records a receiver left on this host's disk: count them, or move
    them to the database.

    Also names the other database URLs (as spelled, without their password) whose
    spools on this host hold records of gone receivers.

    A Retell call_inbound record that neither Redis nor the database took before its
    answer is a file under $HOOKFLEET_VAR_DIR/spool; the next receiver started on this
    host queues it. Where none will start again (a host taken out of service), move the
    records with --to-database: each becomes a received row, which `hookfleet sweep`
    queues (at once with --older-than 1s), applied once. Records of a receiver still
    running are its own and left alone. Exit status 1 when the database refused them
    (their files stay).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from ingest.shelved_events import shelve
    from ingest.spool import Spool, discard

    settings = invocation_settings()
    here = Spool(settings.var_dir, settings.database_url)
    try:
        found = here.survey()
    except OSError as error:
        raise click.ClickException(f"cannot read {here.root}: {error}") from error
    running = sum(records for _, alive, records in found if alive)
    gone = sum(records for _, alive, records in found if not alive)
    click.echo(
        f"{gone} record(s) left by receivers gone from this host, {running} held by "
        f"receivers running here, in {here.root}"
    )
    for url, records in here.strays():
        click.echo(
            f"{records} more left for another database URL, {url}: run this command with "
            "HOOKFLEET_DATABASE_URL spelled so (and its password) to move them"
        )
    if not to_database or not gone:
        return
    try:
        taken = here.adopt()
        written = shelve(settings.database_url, [record.message for _, record in taken])
    except OSError as error:
        raise click.ClickException(f"cannot take the records: {error}") from error
    except (SQLAlchemyError, ValueError) as error:
        raise click.ClickException(
            f"the database refused the records, their files stay: {type(error).__name__}"
        ) from error
    else:
        for path, _ in taken:
            discard(path)
    finally:
        here.release()  # what is left is for the next receiver, or this command again
    click.echo(
        f"wrote {written} record(s) to the database as received rows "
        f"({len(taken) - written} already there); `hookfleet sweep --older-than 1s` "
        "queues them now, the stuck-work sweep later"
    )

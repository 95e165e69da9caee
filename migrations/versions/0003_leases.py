"""leader lease, daemons, operator controls, on-demand reference price

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00

- `leases`: one row per lease name; the fencing token only ever grows (daemon/store/lease.py).
- `daemons`: every fleetd on the store, leader or standby, as last seen (fleetctl status).
- `controls`: operator switches (fleetctl pause|resume), read by the tick at its start.
- `instances.on_demand_price_per_hour`: the savings baseline of `fleetctl audit`.
- index `ix_decisions_at_outcome`: the audit's count of decisions by outcome, index-only.
"""
from alembic import op
import sqlalchemy as sa


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=256), nullable=True),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(), nullable=True),
        sa.Column("renewed_at", sa.DateTime(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "daemons",
        sa.Column("holder", sa.String(length=256), nullable=False),
        sa.Column("hostname", sa.String(length=256), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen", sa.DateTime(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("holder"),
    )
    with op.batch_alter_table("daemons", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_daemons_last_seen"), ["last_seen"], unique=False)
    op.create_table(
        "controls",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("updated_by", sa.String(length=256), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("on_demand_price_per_hour", sa.Float(), nullable=True))
    # fleetctl audit counts decisions by outcome over its window: index-only over a year of ticks.
    op.create_index("ix_decisions_at_outcome", "decisions", ["at", "outcome"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_decisions_at_outcome", table_name="decisions")
    if op.get_bind().dialect.name == "sqlite":
        # Native DROP COLUMN (SQLite >= 3.35): a batch copy would DROP TABLE instances, which
        # the instance_events foreign keys forbid while PRAGMA foreign_keys is on.
        op.execute("ALTER TABLE instances DROP COLUMN on_demand_price_per_hour")
    else:
        op.drop_column("instances", "on_demand_price_per_hour")
    op.drop_table("controls")
    with op.batch_alter_table("daemons", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_daemons_last_seen"))
    op.drop_table("daemons")
    op.drop_table("leases")

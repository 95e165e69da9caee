"""burst peaks of demand windows

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:00:00

- `demand_windows.peaks`: the highest arrival rate over 1, 2, 5, 10 and 30-second slices of
  the window ("seconds:req/s" pairs, on the window's first row), so the planner can size a
  fleet for the bursts inside a window and not only its mean (DemandWindow.peaks).
"""
from alembic import op
import sqlalchemy as sa


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("demand_windows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("peaks", sa.String(length=256), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE demand_windows DROP COLUMN peaks")
    else:
        op.drop_column("demand_windows", "peaks")

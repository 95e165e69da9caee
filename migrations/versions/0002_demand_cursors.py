"""demand-source cursors; alert subjects

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00

- demand_cursors: where each service's demand source stands (file offset and
  inode, last window end, ...), written in the same transaction as the windows
  it produced, so a restart resumes exactly there.
- instances.state_since: when the instance entered its state (liveness: launches
  and terminations that never complete are timed from it).
- alerts.subject: what an alert is about (an instance name, an offering key), so
  an alert about a lasting condition is raised once, not every tick.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('demand_cursors',
    sa.Column('service', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('cursor', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('service')
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('subject', sa.String(length=256), nullable=True))
        batch_op.create_index(batch_op.f('ix_alerts_subject'), ['subject'], unique=False)
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('state_since', sa.DateTime(), nullable=True))


def downgrade() -> None:
    # Native DROP COLUMN (SQLite >= 3.35): a batch copy would DROP TABLE instances, which the
    # instance_events foreign keys forbid while PRAGMA foreign_keys is on.
    op.drop_index(op.f('ix_alerts_subject'), table_name='alerts')
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE instances DROP COLUMN state_since")
        op.execute("ALTER TABLE alerts DROP COLUMN subject")
    else:
        op.drop_column('instances', 'state_since')
        op.drop_column('alerts', 'subject')
    op.drop_table('demand_cursors')

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
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('state_since')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alerts_subject'))
        batch_op.drop_column('subject')
    op.drop_table('demand_cursors')

"""packed sweeps: the pack a job was queued in, and how many points its attempt trains together

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pack_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("packed_with", sa.Integer(), nullable=True))
        batch_op.create_index("ix_jobs_pack_id", ["pack_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_pack_id")
        batch_op.drop_column("packed_with")
        batch_op.drop_column("pack_id")

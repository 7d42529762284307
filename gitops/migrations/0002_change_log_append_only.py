from django.db import migrations

# The model refuses updates and deletes too, but only the database can stop a
# raw query or another client from rewriting history.
FORWARD = """
CREATE FUNCTION gitops_change_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the change log (gitops_change) is append-only: % refused', TG_OP;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER gitops_change_append_only
    BEFORE UPDATE OR DELETE ON gitops_change
    FOR EACH ROW EXECUTE FUNCTION gitops_change_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS gitops_change_append_only ON gitops_change;
DROP FUNCTION IF EXISTS gitops_change_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("gitops", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]

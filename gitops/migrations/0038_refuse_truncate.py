"""TRUNCATE of the change log and the audit trails is refused, as UPDATE and DELETE are.

Their row triggers (0002, 0011, 0030, 0037) fire for UPDATE and DELETE only: a TRUNCATE (`manage.py
flush`, or `TRUNCATE gitops_source CASCADE`, which reaches the change log through its keys) emptied
them without a word. A statement trigger refuses it unless the session set ``sluice.allow_truncate``
(the test suite's database reset does, on its own connections): a guard against mistakes, as the
archive's setting is, not against someone who may run any SQL.
"""

from django.db import migrations

TABLES = ("gitops_change", "gitops_sourceaudit", "gitops_clusteraudit", "gitops_accessaudit")

REFUSE = """
CREATE FUNCTION gitops_refuse_truncate() RETURNS trigger AS $$
BEGIN
    IF coalesce(current_setting('sluice.allow_truncate', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION '% is append-only: TRUNCATE refused', TG_TABLE_NAME;
END
$$ LANGUAGE plpgsql;
""" + "".join(
    f"""
CREATE TRIGGER {table}_refuse_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION gitops_refuse_truncate();
"""
    for table in TABLES
)

REFUSE_UNDO = "".join(f"DROP TRIGGER IF EXISTS {table}_refuse_truncate ON {table};\n" for table in TABLES) + (
    "DROP FUNCTION IF EXISTS gitops_refuse_truncate();"
)


class Migration(migrations.Migration):
    dependencies = [
        ("gitops", "0037_access_audit"),
    ]

    operations = [
        migrations.RunSQL(REFUSE, REFUSE_UNDO),
    ]

"""Forms of the source pages. They only turn text into values: every rule is the service's
(``gitops.source_admin``), whose problems come back by field and are shown next to it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from django import forms

from dashboard.templatetags.sluice import seconds_label
from gitops import source_admin
from gitops.models import MAX_REQUIRED_APPROVALS, Source, masked_url
from gitops.redaction import url_without_query
from gitops.vocabulary import ObjectsOnRemoval


class LinesField(forms.CharField):
    """A list of strings, one per line; blank lines are dropped."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false"})

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [line.strip() for line in text.splitlines() if line.strip()]

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, list | tuple) else value


class DescribedErrors:
    """Ties each field's errors to its widget (aria-describedby, aria-invalid), so a screen reader reads
    the problem with the field; _field.html gives the error list that id."""

    def describe_errors(self: Any) -> None:
        for name, field in self.fields.items():
            if name not in self.errors:
                continue
            bound = self[name]
            described = [f"{bound.auto_id}_helptext"] if field.help_text else []
            field.widget.attrs["aria-describedby"] = " ".join([*described, f"{bound.auto_id}_errors"])
            field.widget.attrs["aria-invalid"] = "true"

    def full_clean(self: Any) -> None:
        super().full_clean()  # type: ignore[misc]
        self.describe_errors()


def _text(**attrs: str) -> forms.TextInput:
    return forms.TextInput(attrs={"spellcheck": "false", "autocomplete": "off", **attrs})


class SourceForm(DescribedErrors, forms.Form):
    """Every setting ``gitops add-source`` and ``update-source`` take; the name only when creating."""

    name = forms.CharField(
        max_length=63,
        help_text="Lowercase letters, digits and '-', at most 63. It labels every object the source manages.",
        widget=_text(),
    )
    url = forms.CharField(
        label="Repository URL",
        max_length=2000,
        help_text="https://, ssh://, git://, file:// or user@host:path, without credentials.",
        widget=_text(placeholder="https://git.example.com/team/config.git"),
    )
    branch = forms.CharField(max_length=255, initial="main", widget=_text())
    path = forms.CharField(
        label="Directory",
        max_length=1000,
        required=False,
        help_text="A directory within the repository; empty for its root.",
        widget=_text(placeholder="config/prod"),
    )
    poll_interval = forms.CharField(
        label="Poll interval",
        initial="60s",
        max_length=20,
        help_text="30s, 5m, 1h30m or 1h (5s to 24h). Pushes through the webhook sync at once.",
        widget=_text(),
    )
    credentials_ref = forms.CharField(
        label="Credentials reference",
        max_length=500,
        required=False,
        help_text="Where the worker finds the token or key: env:VAR, file:/path or ssh-key:/path. "
        "Never the secret itself.",
        widget=_text(placeholder="env:GIT_TOKEN"),
    )
    allowed_namespaces = LinesField(
        label="Allowed namespaces",
        help_text="One glob per line, e.g. team-*. The repository can narrow this, never widen it.",
    )
    analysis_url_prefixes = LinesField(
        label="Analysis URL prefixes",
        required=False,
        help_text="One per line: the URLs the repository's analysis steps may call. Empty: none.",
    )
    required_approvals = forms.IntegerField(
        label="Approval floor",
        initial=0,
        help_text=f"Approvers (none an author) needed past the first step, 0 to {MAX_REQUIRED_APPROVALS}.",
        widget=forms.NumberInput(attrs={"min": 0, "max": MAX_REQUIRED_APPROVALS}),
    )
    commit_url_template = forms.CharField(
        label="Commit URL template",
        max_length=500,
        required=False,
        help_text="The Git host's page for a commit, with {commit}.",
        widget=_text(placeholder="https://git.example.com/team/config/commit/{commit}"),
    )
    notify_urls = LinesField(
        label="Notification URLs",
        required=False,
        help_text="One per line: rollout and revision events go there as CloudEvents. Saved ones are shown "
        "masked; leave such a line as it is to keep that URL.",
    )

    def __init__(self, *args: Any, creating: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not creating:
            del self.fields["name"]

    @classmethod
    def editing(cls, source: Source, data: Mapping[str, Any] | None = None) -> SourceForm:
        initial = {
            # Shown as pages show it (a source from before credentials in URLs were refused may hold
            # some); sent back unchanged, source_update keeps the stored URL.
            "url": url_without_query(source.url),
            "branch": source.branch,
            "path": source.path,
            "poll_interval": seconds_label(int(source.poll_interval.total_seconds())),
            "credentials_ref": source.credentials_ref,
            "allowed_namespaces": source.allowed_namespaces,
            "analysis_url_prefixes": source.analysis_url_prefixes,
            "required_approvals": source.required_approvals,
            "commit_url_template": source.commit_url_template,
            # Shown masked (a chat webhook's path is its token); source_update keeps a masked line's URL.
            "notify_urls": [masked_url(url) for url in source.notify_urls or []],
        }
        return cls(data, initial=initial, creating=False)

    def clean_poll_interval(self) -> timedelta:
        try:
            return source_admin.parse_interval(self.cleaned_data["poll_interval"])
        except source_admin.SourceSettingsError as exc:
            raise forms.ValidationError(exc.problems["poll_interval"]) from exc

    def settings(self) -> dict[str, Any]:
        return dict(self.cleaned_data)

    def add_problems(self, problems: Mapping[str, Sequence[str]]) -> None:
        """The service's problems, each next to its field (or above the form). A URL with a password in
        it is shown back without the password, and a refused credential reference not at all."""
        if "url" in problems and "url" in self.data:
            self.data = self.data.copy()
            self.data["url"] = url_without_query(self.data["url"])
        if "credentials_ref" in problems and "credentials_ref" in self.data:
            # A refused reference may be a token pasted where its name belongs: never written back.
            self.data = self.data.copy()
            self.data["credentials_ref"] = ""
        for field, messages in problems.items():
            for message in messages:
                self.add_error(field if field in self.fields else None, message)
        self.describe_errors()


class RemoveSourceForm(DescribedErrors, forms.Form):
    """Deleting asks what happens to the objects, and for the name, so a slip of the hand deletes nothing."""

    objects = forms.ChoiceField(
        label="What happens to the objects it manages?",
        choices=[
            (
                ObjectsOnRemoval.KEEP.value,
                "Keep them: they stay as they are, without Sluice's labels, annotations and field ownership",
            ),
            (ObjectsOnRemoval.PRUNE.value, "Prune them: they are deleted from the cluster"),
        ],
        widget=forms.RadioSelect,
    )
    confirm = forms.CharField(label="Type the source's name to confirm", max_length=63, widget=_text())

    def __init__(self, *args: Any, source: Source, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source

    def clean_confirm(self) -> str:
        typed: str = self.cleaned_data["confirm"].strip()
        if typed != self.source.name:
            raise forms.ValidationError(f"type {self.source.name} to confirm")
        return typed

from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from dashboard import flags, freezes, previews, sources, views
from dashboard.api import api

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.prometheus_metrics, name="metrics"),
    path("sources/new", sources.source_create, name="source-create"),
    path("sources/<slug:name>/", views.source_detail, name="source"),
    path("sources/<slug:name>/sync", views.source_sync, name="source-sync"),
    path("sources/<slug:name>/status", sources.source_status, name="source-status"),
    path("sources/<slug:name>/edit", sources.source_edit, name="source-edit"),
    path("sources/<slug:name>/suspend", sources.source_suspend, name="source-suspend"),
    path("sources/<slug:name>/resume", sources.source_resume, name="source-resume"),
    path("sources/<slug:name>/delete", sources.source_delete, name="source-delete"),
    path("removals/<int:removal_id>/", sources.removal_detail, name="removal"),
    path("sources/<slug:name>/preview/", previews.source_preview, name="source-preview"),
    path("rollouts/", views.rollout_list, name="rollouts"),
    path("rollouts/<int:rollout_id>/", views.rollout_detail, name="rollout"),
    path("rollouts/<int:rollout_id>/<slug:action>", views.rollout_action, name="rollout-action"),
    path("changes/", views.change_log, name="changes"),
    path("clusters/", views.clusters, name="clusters"),
    path("windows/", freezes.windows_page, name="windows"),
    path("windows/new", freezes.window_create, name="window-add"),
    path("windows/<int:window_id>/remove", freezes.window_delete, name="window-remove"),
    path("freezes/new", freezes.freeze_create, name="freeze"),
    path("freezes/lift", freezes.freeze_lift, name="unfreeze"),
    path("flags/", flags.flag_list, name="flags"),
    path("webhooks/git/<slug:name>", views.git_webhook, name="webhook"),
    path("login/", auth_views.LoginView.as_view(template_name="dashboard/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", api.urls),
    # Any other path under /api answers as the API does, in JSON, not with the site's HTML page.
    re_path(r"^api/", views.api_not_found, name="api-not-found"),
]

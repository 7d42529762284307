from django.contrib.auth import views as auth_views
from django.urls import path

from dashboard import previews, views
from dashboard.api import api

app_name = "dashboard"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.prometheus_metrics, name="metrics"),
    path("sources/<slug:name>/", views.source_detail, name="source"),
    path("sources/<slug:name>/sync", views.source_sync, name="source-sync"),
    path("sources/<slug:name>/preview/", previews.source_preview, name="source-preview"),
    path("rollouts/<int:rollout_id>/", views.rollout_detail, name="rollout"),
    path("rollouts/<int:rollout_id>/<slug:action>", views.rollout_action, name="rollout-action"),
    path("changes/", views.change_log, name="changes"),
    path("webhooks/git/<slug:name>", views.git_webhook, name="webhook"),
    path("login/", auth_views.LoginView.as_view(template_name="dashboard/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", api.urls),
]

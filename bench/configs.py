"""Config files generated for each system under test (written into a temp dir per run)."""
from __future__ import annotations

from pathlib import Path

import yaml

LITELLM_ENV = {k: "True" for k in (
    "LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "LITELLM_LOCAL_BLOG_POSTS",
    "LITELLM_LOCAL_POLICY_TEMPLATES", "LITELLM_LOCAL_AUTOROUTER_PRESETS")}
LITELLM_ENV["LITELLM_LOG"] = "ERROR"

FRANKFURT = {"lat": 50.11, "lon": 8.68, "name": "Frankfurt"}
PARIS = {"lat": 48.86, "lon": 2.35, "name": "Paris"}
# Only what the bench needs is set (everything else keeps the gateway's defaults, so the config
# survives schema growth); load scraping stays on so infercdn pays for all its features.
INFERCDN_COMMON = {
    "geoip": {"database": "embedded", "cache_size": 65536},
    "routing": {"policy": "geo_latency", "balancer": "p2c"},
    "health": {"interval_s": 1.0, "timeout_s": 1.0, "rise": 2, "fall": 1},
    "outlier": {"consecutive_failures": 2, "base_ejection_s": 10, "max_ejection_s": 300,
                "max_ejected_percent": 100},
    "load": {"enabled": True, "scrape_interval_s": 1.0},
}


def infercdn_yaml(upstreams: list[str], regions: bool, passthrough: bool = False, access_log: bool = True) -> str:
    """One region and pool holding every upstream, or (``regions``) one region/pool per upstream:
    ``eu-central`` (Frankfurt, where the gateway is) first, then ``eu-west`` (Paris).  ``access_log``:
    the revision has the setting (older ones, run with ``--rev``, reject it)."""
    gateway = {"host": "127.0.0.1", "port": 0, "location": FRANKFURT, "region": "eu-central",
               "trusted_proxies": ["127.0.0.0/8"]}
    if access_log:
        gateway["access_log"] = "off"  # as nginx's here
    if not regions:
        region_list = [{"name": "eu-central", "location": FRANKFURT}]
        pools = [{"name": "eu-central-pool", "region": "eu-central", "models": ["tiny-chat"],
                  "endpoints": [{"url": u} for u in upstreams]}]
    else:
        names = [("eu-central", FRANKFURT), ("eu-west", PARIS)]
        region_list = [{"name": n, "location": loc} for n, loc in names[: len(upstreams)]]
        pools = [{"name": f"{n}-pool", "region": n, "models": ["tiny-chat"], "endpoints": [{"url": u}]}
                 for (n, _), u in zip(names, upstreams)]
    doc = {"gateway": gateway, **INFERCDN_COMMON, "regions": region_list, "pools": pools}
    if passthrough:
        doc["models"] = {"*": {"non_stream": "passthrough"}}
    return yaml.safe_dump(doc, sort_keys=False)


def nginx_conf(upstreams: list[str], port: int, work: Path, workers: int = 1) -> str:
    servers = "".join(f"    server {u.removeprefix('http://')};\n" for u in upstreams)
    return f"""worker_processes {workers};
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 32768; }}
http {{
  access_log off;
  client_body_temp_path {work}/body;
  proxy_temp_path {work}/proxy;
  upstream up {{
{servers}    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=16384;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 600s;
      tcp_nodelay on;
    }}
  }}
}}
"""


def litellm_yaml(upstreams: list[str], master_key: str) -> str:
    models = [{"model_name": "tiny-chat",
               "litellm_params": {"model": "openai/tiny-chat", "api_base": f"{u}/v1", "api_key": "none",
                                  "input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7}}
              for u in upstreams]
    doc = {"model_list": models,
           "litellm_settings": {"num_retries": 0, "callbacks": [], "drop_params": True,
                                "request_timeout": 600, "set_verbose": False},
           "router_settings": {"routing_strategy": "simple-shuffle", "num_retries": 0},
           "general_settings": {"master_key": master_key}}
    return yaml.safe_dump(doc, sort_keys=False)

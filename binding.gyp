{
  "targets": [
    {
      "target_name": "sd_notify",
      "sources": ["native/sd_notify.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "defines": ["NAPI_VERSION=8"]
    },
    {
      "target_name": "flock",
      "sources": ["native/flock.c"],
      "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}

// tryLock(fd): flock(fd, LOCK_EX | LOCK_NB) from this process. true when taken, false when another
// open file holds it, and a Node-style system error (code, errno, syscall) for anything else.
//
// Why flock and not a PID file: the kernel drops the lock with the last descriptor of the open
// file, so a killed agent (SIGKILL, the OOM killer, a watchdog abort) never leaves a stale lock
// for the next one to guess about. Node has no flock of its own. Descriptors Node opens are
// O_CLOEXEC, so a build the agent started never inherits the lock.
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>

#include <node_api.h>

static napi_value throw_errno(napi_env env, int err) {
  const char *code = err == EBADF ? "EBADF" : err == EINVAL ? "EINVAL" : err == ENOLCK ? "ENOLCK" : err == EINTR ? "EINTR" : "EUNKNOWN";
  char text[256];
  snprintf(text, sizeof text, "flock %s: %s", code, strerror(err));
  napi_value code_v, msg_v, error, errno_v, syscall_v;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_v) != napi_ok ||
      napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg_v) != napi_ok ||
      napi_create_error(env, code_v, msg_v, &error) != napi_ok) {
    napi_throw_error(env, code, text);
    return NULL;
  }
  if (napi_create_int32(env, -err, &errno_v) == napi_ok) napi_set_named_property(env, error, "errno", errno_v);
  if (napi_create_string_utf8(env, "flock", NAPI_AUTO_LENGTH, &syscall_v) == napi_ok)
    napi_set_named_property(env, error, "syscall", syscall_v);
  napi_throw(env, error);
  return NULL;
}

static napi_value try_lock(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  int32_t fd = -1;
  napi_valuetype type;
  if (argc < 1 || napi_typeof(env, argv[0], &type) != napi_ok || type != napi_number ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "flock: fd must be a file descriptor (a non-negative integer)");
    return NULL;
  }
  int rc;
  // A signal can interrupt even a non-blocking flock on some filesystems.
  do rc = flock(fd, LOCK_EX | LOCK_NB);
  while (rc == -1 && errno == EINTR);
  if (rc == -1 && errno != EWOULDBLOCK) return throw_errno(env, errno);
  napi_value result;
  if (napi_get_boolean(env, rc == 0, &result) != napi_ok) return NULL;
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "tryLock", NAPI_AUTO_LENGTH, try_lock, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "tryLock", fn) != napi_ok)
    return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)

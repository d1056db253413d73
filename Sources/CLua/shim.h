#ifndef MOONGATE_CLUA_H
#define MOONGATE_CLUA_H
#include <lua.h>
#include <lualib.h>
#include <lauxlib.h>
#endif

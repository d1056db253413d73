#ifndef MOONGATE_CHIREDIS_H
#define MOONGATE_CHIREDIS_H
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#endif
